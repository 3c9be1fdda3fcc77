"""Valid station-initiated payloads per OCPP version (fuzz seeds and interop checks)."""

from __future__ import annotations

from typing import Any

TS = "2026-06-01T10:00:00Z"
MV_16 = [{"timestamp": TS, "sampledValue": [
    {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW", "context": "Sample.Periodic"},
    {"value": "10.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
    {"value": "230.5", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
    {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
    {"value": "30", "measurand": "Temperature", "unit": "Celsius", "location": "Body"},
    {"value": "42", "measurand": "SoC", "unit": "Percent", "location": "EV"}]}]
MV_201 = [{"timestamp": TS, "sampledValue": [
    {"value": 7.2, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}},
    {"value": 10.1, "measurand": "Current.Import", "phase": "L1"},
    {"value": 1234, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh", "multiplier": 0}},
    {"value": 42, "measurand": "SoC", "location": "EV", "unitOfMeasure": {"unit": "Percent"}}]}]
SCHEDULE_201 = {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}

V16: dict[str, dict[str, Any]] = {
    "BootNotification": {"chargePointVendor": "Acme", "chargePointModel": "X1", "firmwareVersion": "1.0"},
    "Heartbeat": {},
    "StatusNotification": {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": TS},
    "Authorize": {"idTag": "TAG1"},
    "StartTransaction": {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": TS},
    "MeterValues": {"connectorId": 1, "transactionId": 1, "meterValue": MV_16},
    "StopTransaction": {"transactionId": 1, "meterStop": 1000, "timestamp": TS, "reason": "EVDisconnected"},
    "DataTransfer": {"vendorId": "com.acme", "messageId": "x", "data": "hello"},
}
V201: dict[str, dict[str, Any]] = {
    "BootNotification": {"reason": "PowerUp", "chargingStation": {"model": "X2", "vendorName": "Acme"}},
    "Heartbeat": {},
    "StatusNotification": {"timestamp": TS, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    "Authorize": {"idToken": {"idToken": "TAG1", "type": "ISO14443"}},
    "TransactionEvent": {"eventType": "Started", "timestamp": TS, "triggerReason": "CablePluggedIn", "seqNo": 0,
                         "transactionInfo": {"transactionId": "tx-1", "chargingState": "EVConnected"},
                         "evse": {"id": 1, "connectorId": 1}, "meterValue": MV_201},
    "MeterValues": {"evseId": 1, "meterValue": MV_201},
    "NotifyEVChargingNeeds": {"evseId": 1, "chargingNeeds": {
        "requestedEnergyTransfer": "AC_three_phase", "departureTime": "2026-06-01T17:00:00Z",
        "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16, "evMaxVoltage": 400}}},
    "NotifyChargingLimit": {"chargingLimit": {"chargingLimitSource": "SO", "isGridCritical": True}, "evseId": 1,
                            "chargingSchedule": [SCHEDULE_201]},
    "ReportChargingProfiles": {"requestId": 1, "chargingLimitSource": "CSO", "evseId": 1, "tbc": False,
                               "chargingProfile": [{"id": 1, "stackLevel": 0,
                                                    "chargingProfilePurpose": "TxDefaultProfile",
                                                    "chargingProfileKind": "Absolute",
                                                    "chargingSchedule": [SCHEDULE_201]}]},
    "NotifyEVChargingSchedule": {"timeBase": TS, "evseId": 1, "chargingSchedule": SCHEDULE_201},
    "DataTransfer": {"vendorId": "com.acme", "messageId": "x", "data": {"any": [1, 2]}},
}
