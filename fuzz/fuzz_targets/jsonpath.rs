//! Fuzz target for the Json.NET JSONPath evaluator.
//!
//! Input: the first line is the path, the rest is a JSON document (a fixed sample document is used
//! when the rest is not JSON, so every path still gets evaluated). Checks: parsing and both
//! selection functions never panic, `select_one` agrees with `select_all`, and the lenient parser
//! (double-quoted strings) means the same as the strict Json.NET one wherever the latter succeeds.

#![no_main]

use iomt_agent::mapping::jsonpath::{JsonPath, JsonPathError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SAMPLE: &str = r#"{"Body":{"heartRate":78,"unit":"inches","data":[{"systolic":"120","diastolic":80},
{"x":[1,2.5,null,true,"s"]}],"big":18446744073709551615},"Properties":{"iothub-creation-time-utc":
"2019-01-30T22:45:02.6073744Z"},"":{" ":[[[]]]}}"#;

fn check(p: &JsonPath, doc: &Value) {
    let all = p.select_all(doc);
    let one = p.select_one(doc);
    match (&all, &one) {
        (Ok(all), Ok(one)) => {
            assert!(
                all.len() <= 1,
                "select_one succeeded on {} results",
                all.len()
            );
            assert_eq!(all.first().copied(), *one);
        }
        (Ok(all), Err(JsonPathError::MultipleTokens)) => assert!(all.len() > 1),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, json) = text.split_once('\n').unwrap_or((text, ""));
    let sample: Value = serde_json::from_str(SAMPLE).unwrap_or(Value::Null);
    let doc: Value = serde_json::from_str(json).unwrap_or_else(|_| sample.clone());
    if let Ok(p) = JsonPath::parse(path) {
        assert_eq!(p.source(), path);
        check(&p, &doc);
        if doc != sample {
            check(&p, &sample);
        }
    }
    // The double-quote extension never changes an expression Json.NET accepts.
    if let Ok(strict) = JsonPath::parse_strict(path) {
        let lenient = JsonPath::parse(path);
        assert!(lenient.is_ok(), "strict parse succeeded, lenient failed");
        if let Ok(lenient) = lenient {
            assert_eq!(strict.select_all(&doc), lenient.select_all(&doc));
        }
    }
});
