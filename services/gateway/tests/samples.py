"""Valid station-initiated payloads per OCPP version (fuzz seeds and interop checks)."""

from __future__ import annotations

from typing import Any

TS = "2026-06-01T10:00:00Z"
MV_16 = [
    {
        "timestamp": TS,
        "sampledValue": [
            {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW", "context": "Sample.Periodic"},
            {"value": "10.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
            {"value": "230.5", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
            {"value": "1234", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
            {"value": "30", "measurand": "Temperature", "unit": "Celsius", "location": "Body"},
            {"value": "42", "measurand": "SoC", "unit": "Percent", "location": "EV"},
        ],
    }
]
MV_201 = [
    {
        "timestamp": TS,
        "sampledValue": [
            {"value": 7.2, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "kW"}},
            {"value": 10.1, "measurand": "Current.Import", "phase": "L1"},
            {
                "value": 1234,
                "measurand": "Energy.Active.Import.Register",
                "unitOfMeasure": {"unit": "Wh", "multiplier": 0},
            },
            {"value": 42, "measurand": "SoC", "location": "EV", "unitOfMeasure": {"unit": "Percent"}},
        ],
    }
]
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
    "DiagnosticsStatusNotification": {"status": "Idle"},
    "FirmwareStatusNotification": {"status": "Installed"},
    # security whitepaper messages (OCPP 1.6 edition 2 security extensions)
    "LogStatusNotification": {"status": "Uploaded", "requestId": 1},
    "SecurityEventNotification": {"type": "SettingSystemTime", "timestamp": TS, "techInfo": "ntp"},
    "SignCertificate": {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----"},
    "SignedFirmwareStatusNotification": {"status": "Downloaded", "requestId": 1},
}
V201: dict[str, dict[str, Any]] = {
    "BootNotification": {"reason": "PowerUp", "chargingStation": {"model": "X2", "vendorName": "Acme"}},
    "Heartbeat": {},
    "StatusNotification": {"timestamp": TS, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    "Authorize": {"idToken": {"idToken": "TAG1", "type": "ISO14443"}},
    "TransactionEvent": {
        "eventType": "Started",
        "timestamp": TS,
        "triggerReason": "CablePluggedIn",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-1", "chargingState": "EVConnected"},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": MV_201,
    },
    "MeterValues": {"evseId": 1, "meterValue": MV_201},
    "NotifyEVChargingNeeds": {
        "evseId": 1,
        "chargingNeeds": {
            "requestedEnergyTransfer": "AC_three_phase",
            "departureTime": "2026-06-01T17:00:00Z",
            "acChargingParameters": {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16, "evMaxVoltage": 400},
        },
    },
    "NotifyChargingLimit": {
        "chargingLimit": {"chargingLimitSource": "SO", "isGridCritical": True},
        "evseId": 1,
        "chargingSchedule": [SCHEDULE_201],
    },
    "ReportChargingProfiles": {
        "requestId": 1,
        "chargingLimitSource": "CSO",
        "evseId": 1,
        "tbc": False,
        "chargingProfile": [
            {
                "id": 1,
                "stackLevel": 0,
                "chargingProfilePurpose": "TxDefaultProfile",
                "chargingProfileKind": "Absolute",
                "chargingSchedule": [SCHEDULE_201],
            }
        ],
    },
    "NotifyEVChargingSchedule": {"timeBase": TS, "evseId": 1, "chargingSchedule": SCHEDULE_201},
    "DataTransfer": {"vendorId": "com.acme", "messageId": "x", "data": {"any": [1, 2]}},
    "ClearedChargingLimit": {"chargingLimitSource": "SO", "evseId": 1},
    "NotifyEvent": {
        "generatedAt": TS,
        "seqNo": 0,
        "eventData": [
            {
                "eventId": 1,
                "timestamp": TS,
                "trigger": "Delta",
                "actualValue": "Available",
                "eventNotificationType": "HardWiredNotification",
                "component": {"name": "Connector", "evse": {"id": 1}},
                "variable": {"name": "AvailabilityState"},
            }
        ],
    },
    "NotifyReport": {
        "requestId": 1,
        "generatedAt": TS,
        "seqNo": 0,
        "tbc": False,
        "reportData": [
            {
                "component": {"name": "OCPPCommCtrlr"},
                "variable": {"name": "HeartbeatInterval"},
                "variableAttribute": [{"type": "Actual", "value": "300"}],
            }
        ],
    },
    "NotifyMonitoringReport": {"requestId": 1, "seqNo": 0, "generatedAt": TS},
    "NotifyDisplayMessages": {"requestId": 1},
    "NotifyCustomerInformation": {"data": "no data", "seqNo": 0, "generatedAt": TS, "requestId": 1},
    "LogStatusNotification": {"status": "Uploaded", "requestId": 1},
    "FirmwareStatusNotification": {"status": "Installed", "requestId": 1},
    "PublishFirmwareStatusNotification": {"status": "Published", "location": ["http://example.com/fw"], "requestId": 1},
    "ReservationStatusUpdate": {"reservationId": 1, "reservationUpdateStatus": "Expired"},
    "SecurityEventNotification": {"type": "SettingSystemTime", "timestamp": TS, "techInfo": "ntp"},
    "SignCertificate": {
        "csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----",
        "certificateType": "ChargingStationCertificate",
    },
    "Get15118EVCertificate": {
        "iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef",
        "action": "Install",
        "exiRequest": "AAAA",
    },
    "GetCertificateStatus": {
        "ocspRequestData": {
            "hashAlgorithm": "SHA256",
            "issuerNameHash": "aa",
            "issuerKeyHash": "bb",
            "serialNumber": "01",
            "responderURL": "http://ocsp.example.com",
        }
    },
}

# Every message a station may send (the spec's station-to-CSMS messages): each must get a CALLRESULT.
STATION_ACTIONS_16 = frozenset(V16)
STATION_ACTIONS_201 = frozenset(V201)
