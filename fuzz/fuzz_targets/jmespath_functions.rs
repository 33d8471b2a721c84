//! Fuzzes JMESPath compilation and evaluation with the IoMT custom functions.
//!
//! Input: UTF-8 text; the first line is the expression, the rest is the JSON document it runs
//! on (null when the rest is not JSON). Neither compiling nor evaluating may panic or overflow
//! the stack, and multi- and single-select must agree on the same evaluation.
#![no_main]

use iomt_agent::mapping::jmes::{JmesError, JmesExpr};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, rest) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(expr) = JmesExpr::compile(expr) else {
        return;
    };
    let doc: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
    match (expr.select_all(&doc), expr.select_one(&doc)) {
        (Ok(all), Ok(None)) => assert!(all.is_empty()),
        (Ok(all), Ok(Some(_))) => assert!(all.len() <= 1),
        (Ok(all), Err(JmesError::Eval { message })) => {
            assert!(all.len() > 1 && message.starts_with("multiple tokens"))
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (all, one) => panic!("select_all {all:?} disagrees with select_one {one:?}"),
    }
});
