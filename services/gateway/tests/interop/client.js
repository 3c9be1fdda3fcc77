// An independent OCPP station for interop tests: ocpp-rpc in strict mode validates every message in
// both directions against the official OCPP 1.6 / 2.0.1 JSON schemas.
// usage: node client.js <endpoint ws://host:port/ocpp> <identity> <ocpp1.6|ocpp2.0.1> <samples.json>
// Sends BootNotification then every sample request; answers the CSMS's commands; prints READY, then on
// a "done" line on stdin prints a JSON summary {errors, received} and exits.
'use strict';
const fs = require('fs');
const readline = require('readline');
const { RPCClient } = require('ocpp-rpc');

const [endpoint, identity, protocol, samplesPath] = process.argv.slice(2);
const samples = JSON.parse(fs.readFileSync(samplesPath, 'utf8'));
const v16 = protocol === 'ocpp1.6';
const errors = [];
const received = [];
const now = () => new Date().toISOString();

const cli = new RPCClient({ endpoint, identity, protocols: [protocol], strictMode: true, reconnect: false });
cli.on('strictValidationFailure', (e) => errors.push({ where: 'strict', message: String(e && e.error && e.error.message || e) }));
cli.on('badMessage', (e) => errors.push({ where: 'badMessage', message: String(e && e.error && e.error.message || e) }));

const schedule201 = { id: 1, chargingRateUnit: 'A', chargingSchedulePeriod: [{ startPeriod: 0, limit: 16.0 }] };
const handlers16 = {
  GetConfiguration: () => ({ configurationKey: [
    { key: 'ChargeProfileMaxStackLevel', readonly: true, value: '8' },
    { key: 'ChargingScheduleAllowedChargingRateUnit', readonly: true, value: 'Current,Power' },
    { key: 'ChargingScheduleMaxPeriods', readonly: true, value: '24' },
    { key: 'MaxChargingProfilesInstalled', readonly: true, value: '16' }] }),
  SetChargingProfile: () => ({ status: 'Accepted' }),
  ClearChargingProfile: () => ({ status: 'Accepted' }),
  GetCompositeSchedule: ({ params }) => ({ status: 'Accepted', connectorId: params.connectorId, scheduleStart: now(),
    chargingSchedule: { chargingRateUnit: 'A', chargingSchedulePeriod: [{ startPeriod: 0, limit: 16.0 }] } }),
  ChangeConfiguration: () => ({ status: 'Accepted' }),
  TriggerMessage: () => ({ status: 'Accepted' }),
  Reset: () => ({ status: 'Accepted' }),
};
const handlers201 = {
  GetVariables: ({ params }) => ({ getVariableResult: params.getVariableData.map((d) => ({
    attributeStatus: 'Accepted', component: d.component, variable: d.variable,
    attributeValue: { Enabled: 'true', ProfileStackLevel: '8', RateUnit: 'A,W', PeriodsPerSchedule: '24',
      Entries: '16' }[d.variable.name] || '1' })) }),
  SetVariables: ({ params }) => ({ setVariableResult: params.setVariableData.map((d) => ({
    attributeStatus: 'Accepted', component: d.component, variable: d.variable })) }),
  SetChargingProfile: () => ({ status: 'Accepted' }),
  ClearChargingProfile: () => ({ status: 'Accepted' }),
  GetCompositeSchedule: ({ params }) => ({ status: 'Accepted', schedule: { evseId: params.evseId,
    duration: params.duration, scheduleStart: now(), chargingRateUnit: 'A',
    chargingSchedulePeriod: [{ startPeriod: 0, limit: 16.0 }] } }),
  GetChargingProfiles: () => ({ status: 'Accepted' }),
  TriggerMessage: () => ({ status: 'Accepted' }),
  Reset: () => ({ status: 'Accepted' }),
};
for (const [method, fn] of Object.entries(v16 ? handlers16 : handlers201)) {
  cli.handle(method, (call) => { received.push(method); return fn(call); });
}
cli.handle(({ method }) => { errors.push({ where: 'unexpected-call', message: method }); throw new Error('NotImplemented'); });

async function main() {
  await cli.connect();
  const order = ['BootNotification', ...Object.keys(samples).filter((m) => m !== 'BootNotification')];
  for (const method of order) {
    try {
      const res = await cli.call(method, samples[method]);
      if (method === 'BootNotification' && res.status !== 'Accepted') errors.push({ where: method, message: 'boot ' + res.status });
    } catch (e) {
      errors.push({ where: method, message: String(e && e.message || e), code: e && e.rpcErrorCode });
    }
  }
  process.stdout.write('READY\n');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (line.trim() === 'done') break;
  }
  process.stdout.write(JSON.stringify({ errors, received }) + '\n');
  await cli.close({ force: false });
  process.exit(0);
}

main().catch((e) => { process.stdout.write(JSON.stringify({ errors: [...errors, { where: 'fatal', message: String(e && e.message || e) }], received }) + '\n'); process.exit(1); });
