use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use crate::QmpError;

/// An asynchronous QMP event such as `STOP`, `RESUME` or `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `STOP`.
    pub name: String,
    /// The event's `data` member; `Value::Null` when QEMU sent none.
    pub data: Value,
    /// When QEMU emitted it; `None` if QEMU could not read its clock (it sends -1).
    pub timestamp: Option<SystemTime>,
}

impl Event {
    pub(crate) fn from_json(mut msg: serde_json::Map<String, Value>) -> Result<Event, QmpError> {
        let name = match msg.remove("event") {
            Some(Value::String(s)) => s,
            other => {
                return Err(QmpError::Protocol(format!(
                    "event name is not a string: {other:?}"
                )))
            }
        };
        let data = msg.remove("data").unwrap_or(Value::Null);
        let timestamp = msg.get("timestamp").and_then(|t| {
            let secs = u64::try_from(t.get("seconds")?.as_i64()?).ok()?;
            let micros = u64::try_from(t.get("microseconds")?.as_i64()?).ok()?;
            let since_epoch =
                Duration::from_secs(secs).checked_add(Duration::from_micros(micros))?;
            SystemTime::UNIX_EPOCH.checked_add(since_epoch)
        });
        Ok(Event {
            name,
            data,
            timestamp,
        })
    }
}

/// The interesting parts of a `query-migrate` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// `none`, `setup`, `active`, `completed`, `failed`, `cancelled`, ...
    /// Empty when QEMU reports no migration at all (it answers `{}`).
    #[serde(default)]
    pub status: String,
    /// Milliseconds since the migration started (or its total, once done).
    pub total_time: Option<u64>,
    /// Milliseconds the guest was stopped for the final pass.
    pub downtime: Option<u64>,
    /// Milliseconds spent in setup.
    pub setup_time: Option<u64>,
    /// QEMU's reason when `status` is `failed`.
    pub error_desc: Option<String>,
    /// RAM transfer statistics, when QEMU includes them.
    pub ram: Option<MigrationRam>,
}

/// RAM statistics from `query-migrate` (bytes unless noted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[serde(default)] // absent counters read as 0 rather than failing the whole poll
pub struct MigrationRam {
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
    /// Pages sent as "all zero" markers.
    pub duplicate: u64,
    /// Pages sent in full.
    pub normal: u64,
}

impl MigrationInfo {
    pub(crate) fn from_value(v: Value) -> Result<MigrationInfo, QmpError> {
        serde_json::from_value(v)
            .map_err(|e| QmpError::Protocol(format!("unexpected query-migrate answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_parses_with_and_without_data() {
        let Value::Object(m) =
            json!({"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 5}})
        else {
            unreachable!()
        };
        let ev = Event::from_json(m).unwrap();
        assert_eq!(ev.name, "STOP");
        assert_eq!(ev.data, Value::Null);
        assert_eq!(
            ev.timestamp,
            Some(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1700000000) + Duration::from_micros(5)
            )
        );

        let Value::Object(m) = json!({"event": "SHUTDOWN", "data": {"guest": false},
            "timestamp": {"seconds": -1, "microseconds": -1}})
        else {
            unreachable!()
        };
        let ev = Event::from_json(m).unwrap();
        assert_eq!(ev.data, json!({"guest": false}));
        assert_eq!(ev.timestamp, None);
    }

    #[test]
    fn event_without_name_is_protocol_error() {
        let Value::Object(m) = json!({"event": 3}) else {
            unreachable!()
        };
        assert!(matches!(Event::from_json(m), Err(QmpError::Protocol(_))));
    }

    #[test]
    fn migration_info_parses() {
        let info = MigrationInfo::from_value(json!({
            "status": "completed", "total-time": 120, "downtime": 12, "setup-time": 1,
            "ram": {"transferred": 1000, "remaining": 0, "total": 67108864, "duplicate": 16000,
                    "normal": 3, "mbps": 1.5}
        }))
        .unwrap();
        assert_eq!(info.status, "completed");
        assert_eq!(info.total_time, Some(120));
        assert_eq!(info.ram.as_ref().map(|r| r.total), Some(67108864));

        let info = MigrationInfo::from_value(json!({})).unwrap();
        assert_eq!(info.status, "");
        let info =
            MigrationInfo::from_value(json!({"status": "failed", "error-desc": "boom"})).unwrap();
        assert_eq!(info.error_desc.as_deref(), Some("boom"));
    }
}
