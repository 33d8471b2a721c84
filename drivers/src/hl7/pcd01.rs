//! IHE PCD-01 ORU^R01 → JSON bodies (device-protocols.md §4.2, §4.3).
//!
//! Which OBX rows yield values: those with value type `NM`. Device-related rows (empty
//! OBX-2), `CWE`/`ST`/`DTM` attribute rows and `NA` waveforms yield none, but every row
//! feeds the time and device inheritance below.
//!
//! Per `NM` row:
//! - **Code**: OBX-3.1 when it is a number (MDC), mapped through
//!   [`canonical_code`]; it is the key in `values` and `units`.
//!   A non-numeric identifier is used as the key verbatim (`code` is then `null`).
//! - **Value**: OBX-5 as a [`Decimal`] (digits kept). Empty, or OBX-11 = `X`, gives `null`
//!   with `absent = "missing"`. A value that is not a number rejects the message.
//! - **Unit**: OBX-6 MDC code or reference ID → UCUM (table in [`super::codes`]); a coding
//!   system `UCUM` is taken as is; an unknown MDC unit falls back to its MDC code (the PHD
//!   IG's rule), reported with `unit_system = "mdc"`.
//! - **Time**: OBX-14, else the OBX-14 of the nearest containing row by OBX-4 sub-ID
//!   (`1.0.1.1` inherits from `1.0.1`, then `1.0`/`1`, trailing `.0` parts ignored), else
//!   OBR-7 of its OBR, else MSH-7. Times are ISO 8601 with the sender's offset
//!   (`2024-03-15T08:29:58+01:00`), naive when the sender gave none.
//! - **Device**: OBX-18 the same way (own row, containing rows), else the first OBX-18 under
//!   the same OBR, else `null`.
//! - **Demo**: `DEMO` among the OBX-8 flags (Mindray demo mode). Flagged, not dropped.
//!
//! Rows are grouped into bodies by (time, device, demo), in message order; a code that
//! already has a value in the group opens a new body, so `values` never loses a row. Every
//! body repeats the message-level fields; `message_control_id` (MSH-10) is the dedup key of
//! the message, and `part` / `parts` number its bodies.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::codes::{canonical_code, ucum_for_mdc_ref_id, ucum_for_mdc_unit};
use super::message::{Field, Message, Segment};
use super::Hl7Error;
use crate::body::{Absent, Body, Reading};
use crate::ieee11073::Decimal;

/// Converts an HL7 TS/DTM (`YYYY[MM[DD[HH[MM[SS[.S…]]]]]][±ZZZZ]`) to ISO 8601.
/// Hours without minutes or seconds are padded with zeros; a date-only value drops its
/// offset (an ISO date has none).
pub fn hl7_time_to_iso(ts: &str) -> Result<String, String> {
    let ts = ts.trim();
    let (main, offset) = match ts
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
    {
        Some((i, _)) => (&ts[..i], Some(&ts[i..])),
        None => (ts, None),
    };
    let (digits, fraction) = match main.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (main, None),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![4, 6, 8, 10, 12, 14].contains(&digits.len())
    {
        return Err(format!("{ts:?} is not YYYY[MM[DD[HH[MM[SS]]]]]"));
    }
    if let Some(f) = fraction {
        if digits.len() != 14
            || f.is_empty()
            || f.len() > 4
            || !f.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!("{ts:?} has a bad fraction of a second"));
        }
    }
    let n = |from: usize, len: usize| -> u32 {
        digits
            .get(from..from + len)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let (year, month, day) = (n(0, 4), n(4, 2), n(6, 2));
    let (hour, minute, second) = (n(8, 2), n(10, 2), n(12, 2));
    let month_ok = digits.len() < 6 || (1..=12).contains(&month);
    let date_ok =
        digits.len() < 8 || chrono::NaiveDate::from_ymd_opt(year as i32, month, day).is_some();
    if !month_ok || !date_ok || hour > 23 || minute > 59 || second > 59 {
        return Err(format!("{ts:?} is not a valid date-time"));
    }
    let mut out = match digits.len() {
        4 => format!("{year:04}"),
        6 => format!("{year:04}-{month:02}"),
        8 => format!("{year:04}-{month:02}-{day:02}"),
        _ => format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}"),
    };
    if let Some(f) = fraction {
        out.push('.');
        out.push_str(f);
    }
    if let Some(off) = offset {
        let b = off.as_bytes();
        let ok = b.len() == 5 && b[1..].iter().all(u8::is_ascii_digit);
        let (oh, om) = if ok {
            (&off[1..3], &off[3..5])
        } else {
            ("", "")
        };
        if !ok || oh > "14" || om > "59" {
            return Err(format!("{ts:?} has a bad UTC offset"));
        }
        if digits.len() > 8 {
            out.push_str(&format!("{}{oh}:{om}", &off[..1]));
        }
    }
    Ok(out)
}

fn time_field(field: &Field, name: &str) -> Result<Option<String>, Hl7Error> {
    let raw = field.value();
    if raw.trim().is_empty() {
        return Ok(None);
    }
    hl7_time_to_iso(raw)
        .map(Some)
        .map_err(|reason| Hl7Error::BadTimestamp {
            field: name.to_owned(),
            reason,
        })
}

fn opt(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::from(s)
    }
}

/// Sub-ID without trailing `.0` parts: `1.0.0.0` → `1`.
fn normalize_sub_id(sub_id: &str) -> String {
    let mut parts: Vec<&str> = sub_id.split('.').collect();
    while parts.len() > 1
        && parts
            .last()
            .is_some_and(|p| p.trim_start_matches('0').is_empty())
    {
        parts.pop();
    }
    parts.join(".")
}

/// The normalised sub-ID and those of its containing levels, innermost first.
fn lineage(sub_id: &str) -> Vec<String> {
    if sub_id.is_empty() {
        return Vec::new();
    }
    let parts: Vec<&str> = sub_id.split('.').collect();
    (1..=parts.len())
        .rev()
        .map(|n| normalize_sub_id(&parts[..n].join(".")))
        .collect()
}

/// One OBX row, as read.
struct Row {
    set_id: String,
    value_type: String,
    code_id: String,
    ref_id: String,
    coding_system: String,
    sub_id: String,
    value: String,
    unit_field: Field,
    alarm_limits: String,
    flags: Vec<String>,
    status: String,
    time: Option<String>,
    method: String,
    equipment: Option<(String, String)>,
    body_site: String,
    group: usize,
}

fn read_row(seg: &Segment, group: usize, d: &super::message::Delimiters) -> Result<Row, Hl7Error> {
    let set_id = seg.field(1).value().to_owned();
    let flags_field = seg.field(8);
    let flags = (0..flags_field.repetitions())
        .map(|r| flags_field.get(r, 1, 1).to_owned())
        .filter(|f| !f.is_empty())
        .collect();
    let equipment = {
        let f = seg.field(18);
        let id = f.component(1);
        let kind = if f.component(2).is_empty() {
            f.component(4)
        } else {
            f.component(2)
        };
        (!id.is_empty()).then(|| (id.to_owned(), kind.to_owned()))
    };
    Ok(Row {
        set_id: set_id.clone(),
        value_type: seg.field(2).value().to_owned(),
        code_id: seg.field(3).component(1).trim().to_owned(),
        ref_id: seg.field(3).component(2).to_owned(),
        coding_system: seg.field(3).component(3).to_owned(),
        sub_id: seg.field(4).value().trim().to_owned(),
        value: seg.field(5).value().trim().to_owned(),
        unit_field: seg.field(6).clone(),
        alarm_limits: seg.field(7).value().to_owned(),
        flags,
        status: seg.field(11).value().to_owned(),
        time: time_field(seg.field(14), &format!("OBX-14 (set {set_id})"))?,
        method: seg.field(17).encode(d),
        equipment,
        body_site: seg.field(20).encode(d),
        group,
    })
}

/// (UCUM or fallback unit, unit system, MDC unit code, unit reference ID).
fn unit_of(f: &Field) -> (Option<String>, Option<&'static str>, Option<u32>, String) {
    let id = f.component(1).trim();
    let ref_id = f.component(2).to_owned();
    let system = f.component(3);
    if system.eq_ignore_ascii_case("UCUM") && !id.is_empty() {
        return (Some(id.to_owned()), Some("ucum"), None, ref_id);
    }
    let code = id.parse::<u32>().ok();
    let ucum = code
        .and_then(ucum_for_mdc_unit)
        .or_else(|| ucum_for_mdc_ref_id(&ref_id));
    match (ucum, code) {
        (Some(u), _) => (Some(u.to_owned()), Some("ucum"), code, ref_id),
        (None, Some(c)) => (Some(c.to_string()), Some("mdc"), Some(c), ref_id),
        (None, None) if !id.is_empty() => (Some(id.to_owned()), None, None, ref_id),
        (None, None) => (None, None, None, ref_id),
    }
}

/// Decodes a parsed ORU^R01 into bodies (see the module doc).
pub fn oru_bodies(msg: &Message) -> Result<Vec<Value>, Hl7Error> {
    let d = *msg.delimiters();
    let msh = msg.msh();
    let (kind, trigger) = (msh.field(9).component(1), msh.field(9).component(2));
    if kind != "ORU" || trigger != "R01" {
        return Err(Hl7Error::UnsupportedMessageType {
            found: msh.field(9).encode(&d),
        });
    }
    let control_id = msh.field(10).value();
    if control_id.is_empty() {
        return Err(Hl7Error::MissingField { field: "MSH-10" });
    }
    let message_time = time_field(msh.field(7), "MSH-7")?;
    let app = msh.field(3);
    let sending_application = json!({
        "namespace_id": opt(app.component(1)),
        "universal_id": opt(app.component(2)),
        "universal_id_type": opt(app.component(3)),
    });
    let patient = msg.segment("PID").map_or(Value::Null, patient_json);
    let location = msg.segment("PV1").map_or(Value::Null, location_json);

    // Pass 1: read rows, grouped by the OBR they follow.
    let mut rows = Vec::new();
    let mut obr_times: Vec<Option<String>> = vec![None];
    for seg in msg.segments() {
        match seg.name() {
            "OBR" => obr_times.push(time_field(seg.field(7), "OBR-7")?),
            "OBX" => rows.push(read_row(seg, obr_times.len() - 1, &d)?),
            _ => {}
        }
    }
    let mut times: HashMap<(usize, String), String> = HashMap::new();
    let mut devices: HashMap<(usize, String), (String, String)> = HashMap::new();
    let mut first_device: HashMap<usize, (String, String)> = HashMap::new();
    for row in &rows {
        let key = (row.group, normalize_sub_id(&row.sub_id));
        if let Some(t) = &row.time {
            times.entry(key.clone()).or_insert_with(|| t.clone());
        }
        if let Some(e) = &row.equipment {
            devices.entry(key).or_insert_with(|| e.clone());
            first_device.entry(row.group).or_insert_with(|| e.clone());
        }
    }

    // Pass 2: NM rows into groups.
    struct Group {
        time: Option<String>,
        device: Option<(String, String)>,
        demo: bool,
        body: Body,
        keys: Vec<String>,
        observations: Vec<Value>,
    }
    let mut groups: Vec<Group> = Vec::new();
    for row in rows.iter().filter(|r| r.value_type == "NM") {
        if row.code_id.is_empty() {
            return Err(Hl7Error::MissingField { field: "OBX-3" });
        }
        let lineage = lineage(&row.sub_id);
        let time = row
            .time
            .clone()
            .or_else(|| {
                lineage
                    .iter()
                    .find_map(|s| times.get(&(row.group, s.clone())).cloned())
            })
            .or_else(|| obr_times.get(row.group).cloned().flatten())
            .or_else(|| message_time.clone());
        let device = row
            .equipment
            .clone()
            .or_else(|| {
                lineage
                    .iter()
                    .find_map(|s| devices.get(&(row.group, s.clone())).cloned())
            })
            .or_else(|| first_device.get(&row.group).cloned());
        let demo = row.flags.iter().any(|f| f.eq_ignore_ascii_case("DEMO"));
        let code = row.code_id.parse::<u32>().ok().map(canonical_code);
        let key = code.map_or_else(|| row.code_id.clone(), |c| c.to_string());
        let reading =
            if row.value.is_empty() || row.status == "X" {
                Reading::Absent(Absent::Missing)
            } else {
                Reading::Decimal(row.value.parse::<Decimal>().map_err(|e| {
                    Hl7Error::BadNumeric {
                        set_id: row.set_id.clone(),
                        value: row.value.clone(),
                        reason: e.to_string(),
                    }
                })?)
            };
        let value_json = match &reading {
            Reading::Decimal(dec) => dec.to_json(),
            _ => Value::Null,
        };
        let (unit, unit_system, unit_code, unit_ref_id) = unit_of(&row.unit_field);
        let observation = json!({
            "set_id": row.set_id,
            "code": code,
            "reported_code": row.code_id,
            "ref_id": opt(&row.ref_id),
            "coding_system": opt(&row.coding_system),
            "sub_id": opt(&row.sub_id),
            "value": value_json,
            "unit": unit,
            "unit_system": unit_system,
            "unit_code": unit_code,
            "unit_ref_id": opt(&unit_ref_id),
            "alarm_limits": opt(&row.alarm_limits),
            "flags": row.flags,
            "result_status": opt(&row.status),
            "method": opt(&row.method),
            "body_site": opt(&row.body_site),
        });
        let existing = groups.iter_mut().rev().find(|g| {
            g.time == time && g.device == device && g.demo == demo && !g.keys.contains(&key)
        });
        let group = match existing {
            Some(g) => g,
            None => {
                groups.push(Group {
                    time: time.clone(),
                    device: device.clone(),
                    demo,
                    body: Body::new("hl7v2"),
                    keys: Vec::new(),
                    observations: Vec::new(),
                });
                let last = groups.len() - 1;
                &mut groups[last]
            }
        };
        group.body.measure(&key, reading, unit.as_deref(), None);
        group.keys.push(key);
        group.observations.push(observation);
    }

    let parts = groups.len();
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let mut body = g.body;
            body.field("message_control_id", control_id);
            body.field("part", i + 1);
            body.field("parts", parts);
            body.field("message_time", message_time.clone());
            body.field("sending_application", sending_application.clone());
            let (id, id_type) = match &g.device {
                Some((id, t)) => (Value::from(id.as_str()), opt(t)),
                None => (Value::Null, Value::Null),
            };
            body.field("device_id", id);
            body.field("device_id_type", id_type);
            body.field("patient", patient.clone());
            body.field("location", location.clone());
            body.field("timestamp", g.time);
            body.field("demo", g.demo);
            body.field("observations", g.observations);
            body.into_value()
        })
        .collect())
}

fn patient_json(pid: &Segment) -> Value {
    let ids = pid.field(3);
    let identifiers: Vec<Value> = (0..ids.repetitions())
        .filter(|r| !ids.get(*r, 1, 1).is_empty())
        .map(|r| {
            json!({
                "id": ids.get(r, 1, 1),
                "assigning_authority": opt(ids.get(r, 4, 1)),
                "type": opt(ids.get(r, 5, 1)),
            })
        })
        .collect();
    let name = pid.field(5);
    let mut out = Map::new();
    out.insert("identifiers".into(), Value::from(identifiers));
    out.insert("family_name".into(), opt(name.get(0, 1, 1)));
    out.insert("given_name".into(), opt(name.get(0, 2, 1)));
    Value::Object(out)
}

fn location_json(pv1: &Segment) -> Value {
    let pl = pv1.field(3);
    if pl.is_empty() {
        return Value::Null;
    }
    json!({
        "point_of_care": opt(pl.component(1)),
        "room": opt(pl.component(2)),
        "bed": opt(pl.component(3)),
        "facility": opt(pl.component(4)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_times() {
        let ok = [
            ("20240315083000+0100", "2024-03-15T08:30:00+01:00"),
            ("20090813095715+0000", "2009-08-13T09:57:15+00:00"),
            ("20091028123702", "2009-10-28T12:37:02"),
            ("202403150830", "2024-03-15T08:30:00"),
            ("2024031508", "2024-03-15T08:00:00"),
            ("20240315", "2024-03-15"),
            ("20240315+0100", "2024-03-15"),
            ("202403", "2024-03"),
            ("2024", "2024"),
            ("20240315083000.123-0500", "2024-03-15T08:30:00.123-05:00"),
        ];
        for (ts, iso) in ok {
            assert_eq!(hl7_time_to_iso(ts).as_deref(), Ok(iso), "{ts}");
        }
        for bad in [
            "",
            "2024031",
            "20240230",
            "20241301",
            "20240315250000",
            "2024031508300",
            "20240315083000+01",
            "20240315083000+1500",
            "2024031508.5",
            "x0240315",
        ] {
            assert!(hl7_time_to_iso(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sub_id_lineage() {
        assert_eq!(normalize_sub_id("1.0.0.0"), "1");
        assert_eq!(normalize_sub_id("0.0.0.1"), "0.0.0.1");
        assert_eq!(lineage("1.0.1.1"), ["1.0.1.1", "1.0.1", "1", "1"]);
        assert!(lineage("").is_empty());
    }
}
