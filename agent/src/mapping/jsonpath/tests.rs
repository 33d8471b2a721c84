//! Unit tests for the Json.NET JSONPath dialect.
//!
//! Expected results come from Json.NET's behaviour as read in its sources and its own test suite
//! (`JPathExecuteTests`, `JPathParseTests`), rewritten here as data-driven cases, plus the dialect
//! idioms of the semantics doc §1.4 and every JSONPath expression in the conformance data.

use serde_json::{json, Value};

use super::{JsonPath, JsonPathError};

fn path(expr: &str) -> JsonPath {
    match JsonPath::parse(expr) {
        Ok(p) => p,
        Err(e) => panic!("{expr:?} should parse: {e}"),
    }
}

/// All matches, cloned.
fn sel(expr: &str, doc: &Value) -> Vec<Value> {
    match path(expr).select_all(doc) {
        Ok(v) => v.into_iter().cloned().collect(),
        Err(e) => panic!("{expr:?} should evaluate: {e}"),
    }
}

fn sel_err(expr: &str, doc: &Value) -> JsonPathError {
    match path(expr).select_all(doc) {
        Ok(v) => panic!("{expr:?} should fail, got {v:?}"),
        Err(e) => e,
    }
}

fn parse_err(expr: &str) -> JsonPathError {
    match JsonPath::parse(expr) {
        Ok(p) => panic!("{expr:?} should not parse, got {p:?}"),
        Err(e) => e,
    }
}

fn is_eval_err(e: &JsonPathError) -> bool {
    matches!(e, JsonPathError::Evaluation { .. })
}

// ---------------------------------------------------------------------------------------------
// The three dialect idioms (semantics §1.4) and the table of Rust-crate failures.

#[test]
fn idiom_scan_filter_matches_the_root_of_a_flat_document() {
    let flat = json!({"heartRate": 78, "device": "d1", "date": "2024-01-01T10:00:00Z"});
    assert_eq!(sel("$..[?(@heartRate)]", &flat), vec![flat.clone()]);
    assert_eq!(sel("$..[?(@.heartRate)]", &flat), vec![flat.clone()]);
    assert_eq!(sel("$..[?(@steps)]", &flat), Vec::<Value>::new());
}

#[test]
fn idiom_scan_filter_on_wrapped_event_matches_body_and_root() {
    let wrapped = json!({"Body": {"heartRate": 78}, "Properties": {}});
    // @.heartRate: only Body has it.
    assert_eq!(
        sel("$..[?(@.heartRate)]", &wrapped),
        vec![json!({"heartRate": 78})]
    );
    // @Body.heartRate: the root has it (this is how IotJsonPathContent templates match).
    assert_eq!(
        sel("$..[?(@Body.heartRate)]", &wrapped),
        vec![wrapped.clone()]
    );
}

#[test]
fn idiom_dash_in_dot_member_name() {
    let msg = json!({
        "Properties": {"iothub-creation-time-utc": "2019-01-30T22:45:02.6073744Z"},
        "SystemProperties": {"iothub-connection-device-id": "ev-d795"}
    });
    let got = path("$.Properties.iothub-creation-time-utc").select_one(&msg);
    assert_eq!(got, Ok(Some(&json!("2019-01-30T22:45:02.6073744Z"))));
    let got = path("$.SystemProperties.iothub-connection-device-id").select_one(&msg);
    assert_eq!(got, Ok(Some(&json!("ev-d795"))));
}

#[test]
fn idiom_single_quoted_comparison_without_dot() {
    let doc = json!({"Body": [
        {"unit": "inches", "height": 78},
        {"unit": "meters", "height": 1.98}
    ]});
    assert_eq!(
        sel("$..[?(@unit == 'inches')]", &doc),
        vec![json!({"unit": "inches", "height": 78})]
    );
    assert_eq!(
        sel("$..[?(@unit == 'meters')]", &doc),
        vec![json!({"unit": "meters", "height": 1.98})]
    );
    let flat = json!({"unit": "inches", "height": 78});
    assert_eq!(sel("$..[?(@unit == 'inches')]", &flat), vec![flat.clone()]);
}

// ---------------------------------------------------------------------------------------------
// Basic selection.

#[test]
fn root_forms_select_the_root() {
    let doc = json!({"Blah": 1});
    for expr in ["$", "", " "] {
        assert_eq!(path(expr).select_one(&doc), Ok(Some(&doc)), "{expr:?}");
    }
}

#[test]
fn member_access_forms() {
    let doc =
        json!({"Blah": 1, "a": {"b": [10, 20, 30]}, "": 5, " ": 6, "$values": [1, 2, 3], "$": 7});
    assert_eq!(sel("Blah", &doc), vec![json!(1)]);
    assert_eq!(sel("$.Blah", &doc), vec![json!(1)]);
    assert_eq!(sel(" $.Blah ", &doc), vec![json!(1)]);
    assert_eq!(sel("['Blah']", &doc), vec![json!(1)]);
    assert_eq!(sel("[  'Blah'  ]", &doc), vec![json!(1)]);
    assert_eq!(sel("$[\"Blah\"]", &doc), vec![json!(1)]);
    assert_eq!(sel("a.b[1]", &doc), vec![json!(20)]);
    assert_eq!(sel("$.a.b[2]", &doc), vec![json!(30)]);
    assert_eq!(sel("$.a['b'](0)", &doc), vec![json!(10)]); // `(0)` is `[0]`
    assert_eq!(sel("['']", &doc), vec![json!(5)]);
    assert_eq!(sel("[' ']", &doc), vec![json!(6)]);
    // "$" not followed by "." or "[" starts a member name.
    assert_eq!(sel("$values[1]", &doc), vec![json!(2)]);
    assert_eq!(sel("$ ", &doc), vec![json!(7)]);
    assert_eq!(sel("Missing[1]", &doc), Vec::<Value>::new());
    assert_eq!(sel("$.Blah.deeper", &doc), Vec::<Value>::new());
}

#[test]
fn member_names_run_until_delimiters() {
    let doc = json!({"a*b": 1, "x:y,z?": 2, "q'r": 3, "héllo": 4, "a\tb": 5});
    assert_eq!(sel("$.a*b", &doc), vec![json!(1)]);
    assert_eq!(sel("$.x:y,z?", &doc), vec![json!(2)]);
    assert_eq!(sel("$.q'r", &doc), vec![json!(3)]);
    assert_eq!(sel("$.héllo", &doc), vec![json!(4)]);
    assert_eq!(sel("$.a\tb", &doc), vec![json!(5)]);
    // Outside filters, operators are ordinary name characters.
    let doc2 = json!({"a==b": 1});
    assert_eq!(sel("$.a==b", &doc2), vec![json!(1)]);
}

#[test]
fn quoted_names_with_escapes_and_special_characters() {
    let doc = json!({"Blah.Ha": 1, "[*]": 2, "*": 3, "h'i": 4, "h\\i": 5, "q\"": 6, "a/b\n": 7});
    assert_eq!(sel("['Blah.Ha']", &doc), vec![json!(1)]);
    assert_eq!(sel("['[*]']", &doc), vec![json!(2)]);
    assert_eq!(sel("$.['*']", &doc), vec![json!(3)], "a quoted * is a name");
    assert_eq!(sel(r"['h\'i']", &doc), vec![json!(4)]);
    assert_eq!(sel(r"['h\\i']", &doc), vec![json!(5)]);
    assert_eq!(sel(r#"['q\"']"#, &doc), vec![json!(6)]);
    assert_eq!(sel(r#"["q\""]"#, &doc), vec![json!(6)]);
    assert_eq!(sel(r"['a\/b\n']", &doc), vec![json!(7)]);
}

#[test]
fn multiple_quoted_names_follow_list_order() {
    let doc = json!({"a": 1, "b": 2, "c": 3});
    assert_eq!(sel("['c','a']", &doc), vec![json!(3), json!(1)]);
    assert_eq!(
        sel("[ 'c' , 'missing', 'b' ]", &doc),
        vec![json!(3), json!(2)]
    );
    assert_eq!(sel(r#"["b", 'a']"#, &doc), vec![json!(2), json!(1)]);
    // Quirk: after a comma the next character is taken as the opening quote, whatever it is.
    let odd = json!({"a": 1, "": 2});
    assert_eq!(sel("['a',b']", &odd), vec![json!(1), json!(2)]);
}

#[test]
fn wildcards_only_apply_to_their_container_kind() {
    let doc = json!({"o": {"x": 1, "y": 2}, "a": [3, 4]});
    assert_eq!(
        sel("$.*", &doc),
        vec![json!({"x": 1, "y": 2}), json!([3, 4])]
    );
    assert_eq!(sel("$.o.*", &doc), vec![json!(1), json!(2)]);
    assert_eq!(sel("$.a[*]", &doc), vec![json!(3), json!(4)]);
    assert_eq!(sel("$.a[ * ]", &doc), vec![json!(3), json!(4)]);
    // `.*` is FieldFilter(null): objects only. `[*]` is ArrayIndexFilter(null): arrays only.
    assert_eq!(sel("$.a.*", &doc), Vec::<Value>::new());
    assert_eq!(sel("$.o[*]", &doc), Vec::<Value>::new());
    assert_eq!(sel("$.[*]", &json!([1, 2])), vec![json!(1), json!(2)]);
}

#[test]
fn array_indexes() {
    let a = json!([1, 2, 3, 4]);
    assert_eq!(sel("[1]", &a), vec![json!(2)]);
    assert_eq!(sel("$[  3  ]", &a), vec![json!(4)]);
    assert_eq!(sel("[1000]", &a), Vec::<Value>::new());
    assert_eq!(sel("[1,2,0]", &a), vec![json!(2), json!(3), json!(1)]);
    assert_eq!(sel("[   1  ,   3   ]", &a), vec![json!(2), json!(4)]);
    assert_eq!(sel("[9,1,10]", &a), vec![json!(2)]);
    assert_eq!(sel("[2147483647]", &a), Vec::<Value>::new());
    // Indexing a non-array gives nothing.
    assert_eq!(sel("[1]", &json!({"1": 5})), Vec::<Value>::new());
    // `[1,*]` is `[*]`; a colon after a comma list keeps the list: `[1,2:3]` is `[1,3]`.
    assert_eq!(
        sel("[1,*]", &a),
        vec![json!(1), json!(2), json!(3), json!(4)]
    );
    assert_eq!(sel("[1,2:3]", &a), vec![json!(2), json!(4)]);
}

#[test]
fn negative_index_is_an_error_on_arrays_like_jarray() {
    let a = json!([1, 2, 3]);
    assert!(is_eval_err(&sel_err("[-1]", &a)));
    assert!(is_eval_err(&sel_err("[0,-1]", &a)));
    // Not an array: no match, no error.
    assert_eq!(sel("$.x[-1]", &json!({"x": {"a": 1}})), Vec::<Value>::new());
    // Lazy like Json.NET: an existence test stops at the first token, before reaching -1.
    let nested = json!([[1, 2]]);
    assert_eq!(sel("$[?(@[0,-1])]", &nested), vec![json!([1, 2])]);
    // select_one stops at the second token, before reaching -1.
    assert_eq!(
        path("[0,1,-1]").select_one(&a),
        Err(JsonPathError::MultipleTokens)
    );
}

#[test]
fn slices() {
    let a = json!([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let ints = |v: &[i64]| v.iter().map(|i| json!(i)).collect::<Vec<_>>();
    assert_eq!(sel("[-3:]", &a), ints(&[7, 8, 9]));
    assert_eq!(sel("[-1:-2:-1]", &a), ints(&[9]));
    assert_eq!(sel("[-2:-1]", &a), ints(&[8]));
    assert_eq!(sel("[1:1]", &a), ints(&[]));
    assert_eq!(sel("[1:2]", &a), ints(&[2]));
    assert_eq!(sel("[::-1]", &a), ints(&[9, 8, 7, 6, 5, 4, 3, 2, 1]));
    assert_eq!(sel("[::-2]", &a), ints(&[9, 7, 5, 3, 1]));
    assert_eq!(sel("[:]", &a), ints(&[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    assert_eq!(sel("[ : 3 : ]", &a), ints(&[1, 2, 3]));
    assert_eq!(sel("[1:8:3]", &a), ints(&[2, 5, 8]));
    assert_eq!(sel("[99:]", &a), ints(&[]));
    assert_eq!(sel("[:-19]", &a), ints(&[]));
    assert_eq!(sel("[-100:2]", &a), ints(&[1, 2]));
    assert_eq!(sel("[5:2:-1]", &a), ints(&[6, 5, 4]));
    // A fourth number replaces the step.
    assert_eq!(sel("[0:9:1:4]", &a), ints(&[1, 5, 9]));
    assert_eq!(sel("[:]", &json!({"a": 1})), ints(&[]));
}

#[test]
fn zero_step_fails_at_evaluation_not_at_parse() {
    let p = path("$[::0]");
    assert!(p.select_all(&json!([1, 2])).is_err_and(|e| is_eval_err(&e)));
    // Json.NET checks the step before looking at the input, so even a non-array fails.
    assert!(p
        .select_all(&json!({"a": 1}))
        .is_err_and(|e| is_eval_err(&e)));
    // Inside a filter it only fails when the filter is evaluated.
    let f = path("$[?(@[::0])]");
    assert_eq!(f.select_all(&json!([])), Ok(vec![]));
    assert!(f.select_all(&json!([1])).is_err_and(|e| is_eval_err(&e)));
}

#[test]
fn slice_step_overflow_wraps_like_csharp_int() {
    // i += step overflows int and wraps negative; JArray then throws.
    let a = json!([1, 2, 3]);
    assert!(is_eval_err(&sel_err("[1::2147483647]", &a)));
    assert_eq!(sel("[0::2147483647]", &a), vec![json!(1)]);
}

// ---------------------------------------------------------------------------------------------
// Recursive descent.

#[test]
fn scan_by_name_is_document_order_and_nests() {
    let a = json!([{"Name": 1}, {"Name": 2}, {"Name": {"Name": [3]}}]);
    assert_eq!(
        sel("$..Name", &a),
        vec![json!(1), json!(2), json!({"Name": [3]}), json!([3])]
    );
    assert_eq!(sel("..['Name']", &a).len(), 4);
    let doc = json!({"cont": [], "test": "no one will find me"});
    assert_eq!(sel("$..test", &doc), vec![json!("no one will find me")]);
}

#[test]
fn scan_wildcard_includes_the_start_node() {
    let a = json!([{"Name": 1}, {"Name": 2}]);
    assert_eq!(
        sel("$..*", &a),
        vec![
            a.clone(),
            json!({"Name": 1}),
            json!(1),
            json!({"Name": 2}),
            json!(2)
        ]
    );
    let b = json!([{"Name": 1}, {"Name": 2}, {"Name": {"Name": [3]}}]);
    let all = sel("$..*", &b);
    assert_eq!(all.len(), 9);
    assert_eq!(all[6], json!({"Name": [3]}));
    assert_eq!(all[8], json!(3));
    assert_eq!(sel("$..*", &json!(5)), vec![json!(5)]);
}

#[test]
fn scan_then_member() {
    let doc = json!({
        "a": [{"id": 1}],
        "b": [{"id": 2}, {"id": 3, "c": {"id": 4}}],
        "d": [{"id": 5}]
    });
    assert_eq!(sel("$.b..*.id", &doc), vec![json!(2), json!(3), json!(4)]);
}

#[test]
fn scan_with_dashed_and_quoted_names() {
    let doc = json!({"controls": [
        {"messages": {"addSuggestion": {"en-US": "Add"}}},
        {"header": {"controls": []}, "controls": [
            {"controls": [{"defaultCaption": {"en-US": "Sort by"},
                           "sortOptions": [{"label": {"en-US": "Name"}}]}]}
        ]}
    ]});
    assert_eq!(
        sel("$..en-US", &doc),
        vec![json!("Add"), json!("Sort by"), json!("Name")]
    );
    let nodes = json!({
        "Node1": {
            "Child1": {"Name": "IsMe", "TargetNode": {"Prop1": "Val1", "Prop2": "Val2"}},
            "My.Child.Node": {"TargetNode": {"Prop1": "Val3", "Prop2": "Val4"}}
        },
        "Node2": {"TargetNode": {"Prop1": "Val5", "Prop2": "Val6"}}
    });
    assert_eq!(sel("$..['My.Child.Node']", &nodes).len(), 1);
    // Multiple names in a scan: document order of the properties, not list order.
    let got = sel("$..['My.Child.Node','Prop1','Prop2']", &nodes);
    assert_eq!(got.len(), 7);
    assert_eq!(got[0], json!("Val1"));
    assert_eq!(got[1], json!("Val2"));
    assert!(got[2].is_object());
    assert_eq!(
        &got[3..],
        &[json!("Val3"), json!("Val4"), json!("Val5"), json!("Val6")]
    );
    // A name listed twice yields its value twice.
    assert_eq!(
        sel("$..['x','x']", &json!({"x": 1})),
        vec![json!(1), json!(1)]
    );
}

#[test]
fn scan_ignores_following_array_indexer() {
    // `..` is only kept for a name, a quoted name or a filter: `$..[0]` is `$[0]`.
    let doc = json!([[1, 2], [3, 4]]);
    assert_eq!(sel("$..[0]", &doc), vec![json!([1, 2])]);
    assert_eq!(sel("$..[*]", &doc), vec![json!([1, 2]), json!([3, 4])]);
}

// ---------------------------------------------------------------------------------------------
// Filters.

#[test]
fn existence_and_equality_filters() {
    let a = json!([{"hi": "ho"}, {"hi2": "ha"}]);
    assert_eq!(sel("[ ?( @.hi ) ]", &a), vec![json!({"hi": "ho"})]);
    let b = json!([{"hi": "ho"}, {"hi": "ha"}]);
    assert_eq!(
        sel("[ ?( @.['hi'] == 'ha' ) ]", &b),
        vec![json!({"hi": "ha"})]
    );
    assert_eq!(sel("[?(@hi=='ha')]", &b), vec![json!({"hi": "ha"})]);
    assert_eq!(sel(r#"[?(@.hi == "ho")]"#, &b), vec![json!({"hi": "ho"})]);
    let c = json!([[{"hi": "ho"}], [{"hi": "ha"}]]);
    assert_eq!(
        sel("[ ?( @..hi <> 'ha' ) ]", &c),
        vec![json!([{"hi": "ho"}])]
    );
}

#[test]
fn filters_on_primitive_children() {
    let a = json!([1, 2, 3]);
    assert_eq!(sel("[ ?( @ > 1 ) ]", &a), vec![json!(2), json!(3)]);
    // Primitives have no children, so a second filter finds nothing.
    let nine = json!([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(
        sel("[?(@ <> 1)][?(@ <> 4)][?(@ < 7)]", &nine),
        Vec::<Value>::new()
    );
}

#[test]
fn numeric_comparisons() {
    let a = json!([{"hi": 1}, {"hi": 2}, {"hi": 2.0}, {"hi": 3}]);
    assert_eq!(sel("[ ?( @.hi > 1 ) ]", &a).len(), 3);
    assert_eq!(sel("[ ?( @.hi >= 1 ) ]", &a).len(), 4);
    assert_eq!(sel("[ ?( 1 < @.hi ) ]", &a).len(), 3);
    assert_eq!(
        sel("[ ?( @.hi == 2 ) ]", &a),
        vec![json!({"hi": 2}), json!({"hi": 2.0})]
    );
    assert_eq!(sel("[ ?( @.hi === 2.0 ) ]", &a).len(), 2);
    assert_eq!(sel("[ ?( @.hi <= -12 ) ]", &a).len(), 0);
    assert_eq!(sel("[ ?( @.hi < 5.56789e+0 ) ]", &a).len(), 4);
    assert_eq!(sel("[ ?( @.hi < 2.5 ) ]", &a).len(), 3);
    let f = json!({"Values": [{"Property": 1}]});
    assert!(path("Values[?(@.Property == 1.0)]")
        .select_one(&f)
        .is_ok_and(|v| v.is_some()));
    // Json.NET's approximate float equality.
    let g = json!([{"v": 0.30000000000000004}]);
    assert_eq!(sel("[?(@.v == 0.3)]", &g).len(), 1);
}

#[test]
fn comparisons_between_two_paths_and_root() {
    let a = json!([
        {"price": 199, "max_price": 200},
        {"price": 200, "max_price": 200},
        {"price": 201, "max_price": 200}
    ]);
    assert_eq!(
        sel("[?(@.price > @.max_price)]", &a),
        vec![json!({"price": 201, "max_price": 200})]
    );
    assert_eq!(sel("[?(true)]", &a).len(), 3);
    // A literal on its own is always "existing", whatever its value.
    assert_eq!(sel("[?(false)]", &a).len(), 3);
    assert_eq!(sel("[?(null)]", &a).len(), 3);

    let store = json!({
        "store": {
            "book": [
                {"category": "reference", "price": 8.95},
                {"category": "fiction", "price": 12.99},
                {"category": "fiction", "isbn": "0-553-21311-3", "price": 8.99},
                {"category": "fiction", "isbn": "0-395-19395-8", "price": 22.99}
            ],
            "bicycle": [{"color": "red", "price": 19.95}]
        },
        "expensive": 10
    });
    assert_eq!(
        sel("$..book[?(@.price <= $['expensive'])]", &store).len(),
        2
    );
    assert_eq!(sel("$.store..[?(@.price > $.expensive)]", &store).len(), 3);
    let arr = json!([{"store": {"bicycle": {"price": 19.95}}}]);
    assert_eq!(sel("$.[?($.[0].store.bicycle.price < 20)]", &arr).len(), 1);
    assert_eq!(sel("$.[?($.[0].store.bicycle.price < 10)]", &arr).len(), 0);
}

#[test]
fn nested_filters() {
    let a = json!([
        {"name": "Bad Boys", "cast": [{"name": "Will Smith"}]},
        {"name": "Independence Day", "cast": [{"name": "Will Smith"}]},
        {"name": "The Rock", "cast": [{"name": "Nick Cage"}]}
    ]);
    assert_eq!(
        sel("[?(@.cast[?(@.name=='Will Smith')])].name", &a),
        vec![json!("Bad Boys"), json!("Independence Day")]
    );
}

#[test]
fn scan_filter_cases() {
    let doc = json!({"elements": [
        {"id": "A", "children": [
            {"id": "AA", "children": [{"id": "AAA"}, {"id": "AAB"}]},
            {"id": "AB"}
        ]},
        {"id": "B", "children": []}
    ]});
    assert_eq!(
        sel("$.elements..[?(@.id=='AAA')]", &doc),
        vec![json!({"id": "AAA"})]
    );
    assert_eq!(sel("$.elements[?(true)]", &doc).len(), 2);
    // `..[?(true)]` also yields the 8 JProperty tokens (25 in Json.NET); they have no serde_json
    // value, so selecting them is an error here.
    assert!(matches!(
        sel_err("$.elements..[?(true)]", &doc),
        JsonPathError::PropertyToken { name } if name == "id"
    ));
    // Filters with a path from @ never match a property, so normal use is unaffected:
    assert_eq!(sel("$.elements..[?(@.id)]", &doc).len(), 6);
    let escaped = json!({"Property": [{"@Name": "x", "@Value": "y", "@Type": "FindMe"}]});
    assert_eq!(sel("$..[?(@.['@Type'] == 'FindMe')]", &escaped).len(), 1);
}

#[test]
fn scan_wildcard_then_filter_order() {
    let doc = json!({
        "station": 92000041000001i64,
        "containers": [
            {"id": 1, "text": "Sort system", "containers": [
                {"id": "2", "text": "Yard 11"},
                {"id": "92000020100006", "text": "Sort yard 12"},
                {"id": "92000020100005", "text": "Yard 13"}
            ]},
            {"id": "92000020100011", "text": "TSP-1"},
            {"id": "92000020100007", "text": "Passenger 15"}
        ]
    });
    let texts: Vec<Value> = sel("$..*[?(@.text)]", &doc)
        .into_iter()
        .map(|t| t["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![
            json!("Sort system"),
            json!("TSP-1"),
            json!("Passenger 15"),
            json!("Yard 11"),
            json!("Sort yard 12"),
            json!("Yard 13")
        ]
    );
}

#[test]
fn filter_over_an_object_sees_properties_not_values() {
    // QueryFilter iterates JObject children, which are JProperty tokens: `@.x` never matches them.
    let doc = json!({"o": {"a": {"x": 1}, "b": {"x": 2}}});
    assert_eq!(sel("$.o[?(@.x)]", &doc), Vec::<Value>::new());
    assert_eq!(sel("$.o.*[?(@ == 1)]", &doc), Vec::<Value>::new());
    // ... but a filter applied to a property reaches its value, so the property matches.
    assert!(matches!(
        sel_err("$.o[?(@[?(@.x == 2)])]", &doc),
        JsonPathError::PropertyToken { name } if name == "b"
    ));
}

#[test]
fn filters_on_objects_as_reported_in_json_net_issues() {
    // Json.NET issue 1256: `$[?(@.B1)]` does not return B; `$[?(@)]` returns the properties;
    // `$[?(@..B1)]` returns the property "B" (a JProperty).
    let doc = json!({"A": {}, "B": {"B1": 1, "B2": 2}, "C": {"C1": {"C11": true}, "C2": 2}});
    assert_eq!(sel("$[?(@.B1)]", &doc), Vec::<Value>::new());
    assert_eq!(sel("$[?(@.B1 == 1)]", &doc), Vec::<Value>::new());
    assert!(matches!(
        sel_err("$[?(@)]", &doc),
        JsonPathError::PropertyToken { name } if name == "A"
    ));
    assert!(matches!(
        sel_err("$[?(@..B1)]", &doc),
        JsonPathError::PropertyToken { name } if name == "B"
    ));
    assert_eq!(sel("$.B[?(@ == 1)]", &doc), Vec::<Value>::new());
    // Json.NET issue 2311: `$.*.status[?(@ >= 0)]` is empty.
    let stats = json!([{"status": {"statA": 100, "statB": 100}}, {"status": {"statA": 100}}]);
    assert_eq!(sel("$.*.status[?(@ >= 0)]", &stats), Vec::<Value>::new());
    assert_eq!(sel("$[*].status[?(@ >= 0)]", &stats), Vec::<Value>::new());
    // Json.NET issue 2583: no `!` operator.
    assert!(JsonPath::parse("$..book[?(!@.isbn)]").is_err());
}

#[test]
fn not_equals_with_non_primitive_values() {
    let a = json!([
        {"name": "string", "value": "aString"},
        {"name": "number", "value": 123},
        {"name": "array", "value": [1, 2, 3, 4]},
        {"name": "object", "value": {"1": 1}}
    ]);
    assert_eq!(sel("$.[?(@.value!=1)]", &a).len(), 4);
    assert_eq!(
        sel("$.[?(@.value!='2000-12-05T05:07:59-10:00')]", &a).len(),
        4
    );
    assert_eq!(sel("$.[?(@.value!=null)]", &a).len(), 4);
    assert_eq!(sel("$.[?(@.value!=123)]", &a).len(), 3);
    assert_eq!(sel("$.[?(@.value)]", &a).len(), 4);
    // A missing left side never matches, not even `!=`.
    assert_eq!(sel("$.[?(@.nope!=1)]", &a).len(), 0);
    // Objects and arrays only satisfy `!=` (and existence).
    assert_eq!(sel("$.[?(@.value==@.value)]", &a).len(), 2);
    // `>` converts "aString" to a number and fails, like Json.NET's FormatException.
    assert!(is_eval_err(&sel_err("$.[?(@.value>0)]", &a)));
}

#[test]
fn strict_and_coercing_equality() {
    let o = json!({"Values": [{"Coercible": 1, "Name": "Number"}, {"Coercible": "1", "Name": "String"}]});
    assert_eq!(
        sel("Values[?(@.Coercible == '1')].Name", &o),
        vec![json!("String")]
    );
    assert_eq!(
        sel("Values[?(@.Coercible != '1')].Name", &o),
        vec![json!("Number")]
    );
    assert_eq!(
        sel("Values[?(@.Coercible === 1)].Name", &o),
        vec![json!("Number")]
    );
    assert_eq!(
        sel("Values[?(@.Coercible !== 1)].Name", &o),
        vec![json!("String")]
    );
    assert_eq!(
        sel("Values[?(@.Coercible === '1')].Name", &o),
        vec![json!("String")]
    );
    assert_eq!(
        sel("Values[?(@.Coercible !== '1')].Name", &o),
        vec![json!("Number")]
    );

    // (document value, literal, strict match); each pair is also checked the other way round.
    let table = [
        ("1", "1", true),
        ("1", "1.0", true),
        ("1", "true", false),
        ("1", "'1'", false),
        ("'1'", "'1'", true),
        ("false", "false", true),
        ("true", "false", false),
        ("1", "1.1", false),
        ("1", "null", false),
        ("null", "null", true),
        ("null", "'null'", false),
    ];
    let as_json =
        |s: &str| -> Value { serde_json::from_str(&s.replace('\'', "\"")).unwrap_or(Value::Null) };
    for (v1, v2, strict) in table {
        for (doc_side, lit) in [(v1, v2), (v2, v1)] {
            let doc = json!({"Values": [{"Property": as_json(doc_side)}]});
            let eq = sel(&format!("$.Values[?(@.Property === {lit})]"), &doc);
            let ne = sel(&format!("$.Values[?(@.Property !== {lit})]"), &doc);
            assert_eq!(!eq.is_empty(), strict, "{doc_side} === {lit}");
            assert_eq!(!ne.is_empty(), !strict, "{doc_side} !== {lit}");
        }
    }
}

#[test]
fn string_and_number_comparisons_convert_like_dotnet() {
    let doc = json!({"usingmem": "214376"});
    for threshold in ["10", "27000", "21437"] {
        assert_eq!(
            path(&format!("$..[?(@.usingmem>{threshold})]")).select_one(&doc),
            Ok(Some(&doc)),
            "> {threshold}"
        );
    }
    let persons = json!({"persons": [{"name": "John", "age": "26"}, {"name": "Jane", "age": "2"}]});
    assert_eq!(sel("$.persons[?(@.age > 3)]", &persons).len(), 1);
    let persons2 = json!({"persons": [{"name": "John", "age": 26}, {"name": "Jane", "age": 2}]});
    assert_eq!(sel("$.persons[?(@.age > '3')]", &persons2).len(), 1);
    // Strings compare ordinally with each other ("2" > "10").
    assert_eq!(sel("$.persons[?(@.age > '10')]", &persons).len(), 2);
    // A string that is not a number fails the conversion, so the whole selection fails.
    let bad = json!([{"v": "abc"}]);
    assert!(is_eval_err(&sel_err("[?(@.v > 3)]", &bad)));
    assert!(is_eval_err(&sel_err("[?(@.v < 3.5)]", &bad)));
    assert!(is_eval_err(&sel_err("[?(@.v >= true)]", &bad)));
    // But == never converts.
    assert_eq!(sel("[?(@.v == 3)]", &bad).len(), 0);
    // Booleans: "True"/"false" strings convert; numbers compare by non-zero.
    let b = json!([{"v": " True "}, {"v": 0}, {"v": true}]);
    assert_eq!(sel("[?(@.v >= true)]", &b).len(), 2);
    // null sorts before everything.
    let n = json!([{"v": null}, {"v": 1}, {"v": "x"}]);
    assert_eq!(sel("[?(@.v > null)]", &n).len(), 2);
    assert_eq!(
        sel("[?(@.v < 0)]", &json!([{"v": null}, {"v": 1}])).len(),
        1
    );
    assert_eq!(sel("[?(@.v == null)]", &n).len(), 1);
}

#[test]
fn regex_filters() {
    let books = json!([
        {"title": "Sayings of the Century"},
        {"title": "Sword of Honour"},
        {"title": 42}
    ]);
    assert_eq!(
        sel("[?(@.title =~ /^.*Sword.*$/)]", &books),
        vec![json!({"title": "Sword of Honour"})]
    );
    assert_eq!(sel("[?(@.title =~ /sword/)]", &books).len(), 0);
    assert_eq!(sel("[?(@.title =~ /sword/i)]", &books).len(), 1);
    assert_eq!(sel("[?(@.title=~/century$/i)]", &books).len(), 1);
    assert_eq!(
        sel(
            r"[?(@.title =~ /[\-\[\]\/\{\}\(\)\*\+\?\.\\\^\$\|]/g)]",
            &books
        )
        .len(),
        0
    );
    // A single-quoted pattern works too: it is the same string value.
    assert_eq!(sel("[?(@.title =~ '/Honour/')]", &books).len(), 1);
    // Pattern from the document.
    let doc = json!({"p": "/^S/", "items": [{"t": "Sx"}, {"t": "x"}]});
    assert_eq!(
        sel("$.items[?(@.t =~ $.p)]", &doc),
        vec![json!({"t": "Sx"})]
    );
    // An invalid pattern is only an error once a string is matched against it.
    let bad = path("[?(@.title =~ /(unclosed/)]");
    assert_eq!(bad.select_all(&json!([{"title": 1}])), Ok(vec![]));
    assert!(bad
        .select_all(&json!([{"title": "x"}]))
        .is_err_and(|e| is_eval_err(&e)));
    // A "pattern" without slashes fails like .NET's Substring does.
    assert!(is_eval_err(&sel_err(
        "[?(@.t =~ 'abc')]",
        &json!([{"t": "abc"}])
    )));
}

#[test]
fn logical_operators_group_right_without_precedence() {
    let doc = json!([{"a": 1}, {"b": 1}, {"a": 1, "b": 1}, {"c": 1}, {"a": 1, "c": 1}]);
    assert_eq!(sel("[?(@.a && @.b)]", &doc).len(), 1);
    assert_eq!(sel("[?(@.a || @.b)]", &doc).len(), 4);
    assert_eq!(sel("[?(@.a || @.b || @.c)]", &doc).len(), 5);
    // Json.NET: `a && b || c` is `a && (b || c)` (standard precedence would give 3).
    assert_eq!(
        sel("[?(@.a && @.b || @.c)]", &doc),
        vec![json!({"a": 1, "b": 1}), json!({"a": 1, "c": 1})]
    );
    // `a || b && c` is `a || (b && c)`.
    assert_eq!(sel("[?(@.c || @.a && @.b)]", &doc).len(), 3);
    // `&&||` adds the left comparison to both levels: `a && (a || b)`.
    assert_eq!(sel("[?(@.a&&||@.b)]", &doc).len(), 3);
    // Long chains are flat and fine.
    let long = format!("[?({})]", vec!["@.z && @.a || @.b"; 2000].join(" || "));
    assert_eq!(sel(&long, &doc).len(), 0);
}

#[test]
fn short_circuit_avoids_errors_json_net_never_reaches() {
    let doc = json!([{"a": 1, "b": "x"}]);
    // Or stops at the first true: the failing conversion is never evaluated.
    assert_eq!(sel("[?(@.a == 1 || @.b > 3)]", &doc).len(), 1);
    assert!(is_eval_err(&sel_err("[?(@.a == 2 || @.b > 3)]", &doc)));
    // And stops at the first false.
    assert_eq!(sel("[?(@.a == 2 && @.b > 3)]", &doc).len(), 0);
    // The right side is only evaluated when the left side has a token.
    assert_eq!(
        sel("[?(@.missing == @.arr[-1])]", &json!([{"arr": [1]}])).len(),
        0
    );
    assert!(is_eval_err(&sel_err(
        "[?(@.a == @.arr[-1])]",
        &json!([{"a": 1, "arr": [1]}])
    )));
}

#[test]
fn dropped_comparison_quirk() {
    // A comparison not followed by `)`, `&&` or `||` is discarded by Json.NET's parser.
    let doc = json!([{"a": 1}, {"b": 2}]);
    assert_eq!(sel("[?(@.a == 1 @.b)]", &doc), vec![json!({"b": 2})]);
}

#[test]
fn select_one_semantics() {
    let a = json!([1, 2, 3, 4, 5]);
    assert_eq!(
        path("[0, 1]").select_one(&a),
        Err(JsonPathError::MultipleTokens)
    );
    assert_eq!(path("[7]").select_one(&a), Ok(None));
    assert_eq!(path("BlahBlah").select_one(&a), Ok(None));
    assert_eq!(path("[4]").select_one(&a), Ok(Some(&json!(5))));
    let o = json!({"People": [{"N": "Jeff"}]});
    assert_eq!(path("People[0].N").select_one(&o), Ok(Some(&json!("Jeff"))));
    // A null value is a token (Some(null)), not a missing one.
    assert_eq!(
        path("$.x").select_one(&json!({"x": null})),
        Ok(Some(&Value::Null))
    );
}

#[test]
fn big_integers_compare_exactly() {
    let doc = json!([{"v": u64::MAX}, {"v": 9_223_372_036_854_775_807i64}]);
    assert_eq!(sel("[?(@.v > 9223372036854775807)]", &doc).len(), 1);
    assert_eq!(sel("[?(@.v == @.v)]", &doc).len(), 2);
    assert_eq!(sel("[?(@.v > 1.5)]", &doc).len(), 2);
}

#[test]
fn source_is_kept() {
    let text = "$..[?(@heartRate)]";
    assert_eq!(path(text).source(), text);
}

#[test]
fn json_path_is_send_sync_clone_debug() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<JsonPath>();
    check::<JsonPathError>();
}

// ---------------------------------------------------------------------------------------------
// Parsing.

#[test]
fn parse_shapes() {
    let shape = |e: &str| format!("{:?}", path(e).path.steps);
    assert_eq!(shape("$.Blah"), r#"[Field(Some("Blah"))]"#);
    assert_eq!(shape("$.*"), "[Field(None)]");
    assert_eq!(shape("$..*"), "[Scan(None)]");
    assert_eq!(shape("$..* "), "[Scan(None)]");
    assert_eq!(shape("$..Blah"), r#"[Scan(Some("Blah"))]"#);
    assert_eq!(shape("[ * ].derp"), r#"[Index(None), Field(Some("derp"))]"#);
    assert_eq!(shape("[111119990,3]"), "[IndexMulti([111119990, 3])]");
    assert_eq!(
        shape("[  -111119990  :  -3  :  -2  ]"),
        "[Slice { start: Some(-111119990), end: Some(-3), step: Some(-2) }]"
    );
    assert_eq!(
        shape("[  -3  :  ]"),
        "[Slice { start: Some(-3), end: None, step: None }]"
    );
    assert_eq!(
        shape("Blah[0]..Two.Three[1].Four"),
        r#"[Field(Some("Blah")), Index(Some(0)), Scan(Some("Two")), Field(Some("Three")), Index(Some(1)), Field(Some("Four"))]"#
    );
    assert_eq!(
        shape("frameworks.dnxcore50.dependencies.['System.Xml.ReaderWriter'].source"),
        r#"[Field(Some("frameworks")), Field(Some("dnxcore50")), Field(Some("dependencies")), Field(Some("System.Xml.ReaderWriter")), Field(Some("source"))]"#
    );
    assert_eq!(
        shape("[1][0][0][2147483647]")
            .matches("Index(Some(")
            .count(),
        4
    );
    assert_eq!(shape("$..['a','b']"), r#"[ScanMulti(["a", "b"])]"#);
    // A trailing dot followed by spaces is accepted (no name, not at the end).
    assert_eq!(shape("$.a. "), r#"[Field(Some("a"))]"#);
    // Literals.
    let lit = |e: &str| format!("{:?}", path(e).path.steps);
    assert!(lit("[?(@.name>=-12)]").contains("Int(-12)"));
    assert!(lit("[?(@.name>=12.1)]").contains("Float(12.1)"));
    assert!(lit("[?(@.name>=1,000.5 )]").contains("Float(1000.5)"));
    assert!(lit(r"Blah[ ?( @.name=='h\'i' ) ]").contains(r#"Str("h'i")"#));
    assert!(lit("Blah[ ?( @.name=~/hi/i ) ]").contains(r#"Str("/hi/i")"#));
    assert!(lit("Blah[ ?( @.name==null ) ]").contains("Null"));
    assert!(lit("Blah[ ?( @.name==false ) ]").contains("Bool(false)"));
}

#[test]
fn parse_errors_match_json_net() {
    let cases: &[(&str, &str)] = &[
        ("$ .Blah", "unexpected character while parsing path:  "),
        ("$.Blah.", "unexpected end while parsing path"),
        ("$. Blah", "unexpected character while parsing path:  "),
        (
            "[?(@.name||)]",
            "unexpected character while parsing path query: )",
        ),
        (
            "[?(@.name|)]",
            "unexpected character while parsing path query: |",
        ),
        (
            "[?(@.name|",
            "unexpected character while parsing path query: |",
        ),
        ("[?(@.name||", "path ended with open query"),
        (
            "[?(@.name||s",
            "unexpected character while parsing path query: s",
        ),
        ("[?(@.name||@", "path ended with open query"),
        ("[?(@.name||@.", "unexpected end while parsing path"),
        ("[?(@.name||@.)]", "unexpected end while parsing path"),
        (
            "Blah[[0]].Two.Three[1].Four",
            "unexpected character while parsing path indexer: [",
        ),
        ("Blah[0", "path ended with open indexer"),
        ("[]", "array index expected"),
        ("]", "unexpected character while parsing path: ]"),
        ("[1]Blah", "unexpected character following indexer: B"),
        (r"Blah[?(@.title =~ /[\", "path ended with an open regex"),
        (
            r"Blah[ ?( @.name=='h\i' ) ]",
            r"unknown escape character: \i",
        ),
        ("$.Body.", "unexpected end while parsing path"),
        ("$..", "unexpected end while parsing path"),
        ("$['a'", "path ended with open indexer"),
        ("$['a", "path ended with an open string"),
        (
            "$[1 2]",
            "unexpected character while parsing path indexer: 2",
        ),
        ("$[?(@.a = 1)]", "could not read query operator"),
        (
            "$[?@.a]",
            "unexpected character while parsing path indexer: @",
        ),
    ];
    for (expr, want) in cases {
        match JsonPath::parse(expr) {
            Err(JsonPathError::Parse { message, .. }) => {
                assert_eq!(&message, want, "{expr:?}");
            }
            other => panic!("{expr:?}: expected a parse error, got {other:?}"),
        }
    }
}

#[test]
fn parse_errors_without_exact_message() {
    for expr in [
        "$[?(@.a==1&&@.b==2)]", // numbers end only at a space or ')'
        "$[?(@.a==1]",
        "$[?(@.a&&",
        "$[?(",
        "$[?()]",
        "$[?(@.a)",
        "$[?(@.a) x]",
        "$[-]",
        "$[1-2]",
        "$[2147483648]",
        "$[a]",
        "$[",
        " $",
        "$[?(@.a == 99999999999999999999)]",
        "$[?(@.a == 'x' && (@.b))]", // no parenthesised sub-expressions
        "$[?(@.a == \"x\")]x",
        "$[*",
        "$[* x]",
        "$.a(b)", // `(` opens an indexer like `[`
        "$[?(@.a == truex)]",
    ] {
        assert!(
            matches!(JsonPath::parse(expr), Err(JsonPathError::Parse { .. })),
            "{expr:?} should not parse"
        );
    }
    // Positions count characters.
    assert_eq!(
        parse_err("$.é.b.").clone(),
        JsonPathError::Parse {
            position: 6,
            message: "unexpected end while parsing path".to_owned()
        }
    );
}

#[test]
fn strict_parse_rejects_double_quotes_like_json_net() {
    assert!(JsonPath::parse_strict(r#"$["a"]"#).is_err());
    assert!(JsonPath::parse_strict(r#"$[?(@.a == "x")]"#).is_err());
    assert!(JsonPath::parse_strict("$['a']").is_ok());
    assert!(JsonPath::parse(r#"$["a"]"#).is_ok());
    // Member names may still contain a double quote in dot notation.
    assert_eq!(
        JsonPath::parse_strict(r#"$.a"b"#)
            .map(|p| p.select_all(&json!({"a\"b": 1})).map(|v| v.len())),
        Ok(Ok(1))
    );
}

#[test]
fn double_quote_extension_never_changes_a_json_net_expression() {
    // Json.NET: after a comma the next character is skipped as the opening quote and the name
    // ends at `'`, so `['c',"d']` names c and d. (Found by cargo-fuzz.)
    let doc = json!({"c": 1, "d": 2});
    for p in [
        JsonPath::parse_strict(r#"['c',"d']"#),
        JsonPath::parse(r#"['c',"d']"#),
    ] {
        let got = p.and_then(|p| {
            p.select_all(&doc)
                .map(|v| v.into_iter().cloned().collect::<Vec<_>>())
        });
        assert_eq!(got, Ok(vec![json!(1), json!(2)]));
    }
    // A list opened with `"` is the extension (Json.NET rejects it); it may mix quote styles.
    assert_eq!(sel(r#"["c","d"]"#, &doc), vec![json!(1), json!(2)]);
    assert_eq!(sel(r#"["c",'d']"#, &doc), vec![json!(1), json!(2)]);
    // The fuzzer's input, verbatim: strict and lenient must agree.
    let crash = "$.a[1:-1:2][?(@.r =~ /^x.*nullropertie-1>othuiothub-cry\0\0\0on-t2mecut-ta/i)]['c',\"n-tid']";
    let strict = JsonPath::parse_strict(crash).map(|p| format!("{:?}", p.path.steps));
    let lenient = JsonPath::parse(crash).map(|p| format!("{:?}", p.path.steps));
    assert!(strict.is_ok());
    assert_eq!(strict, lenient);
}

#[test]
fn filter_nesting_is_bounded() {
    let nest = |n: usize| format!("$[?({}@.x{})]", "@[?(".repeat(n - 1), ")]".repeat(n - 1));
    let ok = nest(super::parser::MAX_NESTING);
    let doc = json!([[[1]]]);
    assert!(path(&ok).select_all(&doc).is_ok());
    assert!(matches!(
        JsonPath::parse(&nest(super::parser::MAX_NESTING + 1)),
        Err(JsonPathError::Parse { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Robustness: deep documents, long paths.

/// Builds `[[[...[depth]...]]]` without recursion.
fn deep_array(depth: usize) -> Value {
    let mut v = json!({"x": depth});
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// serde_json drops values recursively; take deep values apart iteratively.
fn drop_deep(mut v: Value) {
    let mut stack = Vec::new();
    loop {
        match &mut v {
            Value::Array(a) => stack.append(a),
            Value::Object(o) => {
                let keys: Vec<String> = o.keys().cloned().collect();
                for k in keys {
                    if let Some(x) = o.remove(&k) {
                        stack.push(x);
                    }
                }
            }
            _ => {}
        }
        match stack.pop() {
            Some(next) => v = next,
            None => return,
        }
    }
}

#[test]
fn deep_documents_do_not_overflow_the_stack() {
    let depth = 100_000;
    let doc = deep_array(depth);
    let all = path("$..*").select_all(&doc).map(|v| v.len());
    assert_eq!(all, Ok(depth + 2));
    let hits = path("$..[?(@.x)]").select_all(&doc).map(|v| v.len());
    assert_eq!(hits, Ok(1));
    let names = path("$..x").select_all(&doc).map(|v| v.len());
    assert_eq!(names, Ok(1));
    drop_deep(doc);
}

#[test]
fn long_paths_do_not_overflow_the_stack() {
    let n = 100_000;
    let expr = format!("${}", ".a".repeat(n));
    let p = path(&expr);
    let mut doc = json!(1);
    for _ in 0..n {
        // Not json!: it would serialize `doc` recursively.
        let mut m = serde_json::Map::new();
        m.insert("a".to_owned(), doc);
        doc = Value::Object(m);
    }
    assert_eq!(p.select_one(&doc), Ok(Some(&json!(1))));
    drop_deep(doc);
    let filters = "[?(@)]".repeat(10_000);
    assert!(JsonPath::parse(&format!("${filters}")).is_ok());
}

#[test]
fn work_budget_stops_combinatorial_paths() {
    // A chain of 200 nested arrays: `..*` three times visits ~200^3/6 tokens.
    let doc = deep_array(200);
    let p = path("$..*..*..*");
    assert!(p
        .select_all_with_budget(&doc, 100_000)
        .is_err_and(|e| is_eval_err(&e)));
    // The same path within budget on a small document works, and the budget is large enough.
    let small = deep_array(5);
    assert_eq!(p.select_all(&small).map(|v| v.len()), Ok(84));
    // The real budget: a quadratic filter over a 4,600-deep chain (~10.6M candidates) gives up.
    let big = deep_array(4_600);
    assert!(path("$..*..[?(@.zzz)]")
        .select_all(&big)
        .is_err_and(|e| is_eval_err(&e)));
    drop_deep(big);
    drop_deep(doc);
}

// ---------------------------------------------------------------------------------------------
// Conformance data: every JSONPath expression in shared/conformance/iomt-fhir parses, and the
// type-match expressions select as many tokens as the upstream tests expect measurements.

/// `shared/` sits beside the checkout (`/work/<name>/` with `/work/shared`); worktrees nest one
/// level deeper, so look in every ancestor, starting with the checkout's parent.
fn conformance_dir() -> std::path::PathBuf {
    let primary = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/iomt-fhir"
    ));
    if primary.is_dir() {
        return primary.to_path_buf();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/conformance/iomt-fhir"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| {
            panic!(
                "shared/conformance/iomt-fhir not found above {}",
                env!("CARGO_MANIFEST_DIR")
            )
        })
}

fn read_json(path: &std::path::Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(text.trim_start_matches('\u{feff}')).ok()
}

fn conformance_files() -> Vec<(String, Value)> {
    let dir = conformance_dir();
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance data at {}: {e}", dir.display()));
    for entry in entries.flatten() {
        let p = entry.path();
        if p.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        match read_json(&p) {
            Some(v) => out.push((name, v)),
            None => panic!("{name} is not JSON"),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn get_ci<'v>(obj: &'v serde_json::Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

fn is_jsonpath(lang: &str) -> bool {
    lang.eq_ignore_ascii_case("jsonpath")
}

/// Collects JSONPath expressions: string values of keys ending in "Expression", and `value` of
/// expression objects, unless their language (own or the template's default) is not JsonPath.
fn collect_expressions(v: &Value, default_lang: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            let lang = get_ci(o, "defaultExpressionLanguage")
                .and_then(Value::as_str)
                .unwrap_or(default_lang);
            for (k, val) in o {
                if k.to_ascii_lowercase().ends_with("expression") {
                    match val {
                        Value::String(s) if is_jsonpath(lang) => out.push(s.clone()),
                        Value::Object(e) => {
                            let own = get_ci(e, "language")
                                .and_then(Value::as_str)
                                .unwrap_or(lang);
                            if let (true, Some(s)) =
                                (is_jsonpath(own), get_ci(e, "value").and_then(Value::as_str))
                            {
                                out.push(s.to_owned());
                            }
                        }
                        _ => {}
                    }
                }
                collect_expressions(val, lang, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                collect_expressions(x, default_lang, out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_conformance_expression_parses() {
    let mut all = Vec::new();
    for (name, doc) in conformance_files() {
        let mut exprs = Vec::new();
        collect_expressions(&doc, "JsonPath", &mut exprs);
        for e in exprs {
            all.push((name.clone(), e));
        }
    }
    assert!(all.len() >= 200, "found only {} expressions", all.len());
    let distinct: std::collections::BTreeSet<&str> = all.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        distinct.len() >= 100,
        "found only {} distinct",
        distinct.len()
    );
    for (file, e) in &all {
        assert!(
            JsonPath::parse_strict(e).is_ok(),
            "{file}: {e:?} does not parse: {:?}",
            JsonPath::parse_strict(e)
        );
    }
    // And the JmesPath ones are skipped: this one is not JSONPath.
    assert!(!distinct.contains("to_array(@)[?heartrate]"));
}

/// The templates of a normalization case (file or inline), in order.
fn case_templates(case: &Value) -> Vec<Value> {
    let mapping = match (
        case.get("device_mapping"),
        case.get("device_mapping_inline"),
    ) {
        (Some(Value::String(f)), _) => read_json(&conformance_dir().join(f)).unwrap_or(Value::Null),
        (_, Some(inline)) => inline.clone(),
        _ => Value::Null,
    };
    mapping
        .get("template")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("template").cloned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn conformance_type_match_counts() {
    let cases = read_json(&conformance_dir().join("cases.json")).unwrap_or(Value::Null);
    let Some(list) = cases.get("normalization").and_then(Value::as_array) else {
        panic!("cases.json has no normalization list");
    };
    let mut checked = 0;
    for case in list {
        let id = case.get("id").and_then(Value::as_str).unwrap_or("?");
        let message = match (case.get("message"), case.get("message_inline")) {
            (Some(Value::String(f)), _) => {
                read_json(&conformance_dir().join(f)).unwrap_or(Value::Null)
            }
            (_, Some(m)) => m.clone(),
            _ => continue,
        };
        let Some(expect) = case.get("expect").and_then(Value::as_array) else {
            continue;
        };
        let mut expected: std::collections::BTreeMap<String, usize> = Default::default();
        for m in expect {
            let t = m.get("type").and_then(Value::as_str).unwrap_or("?");
            *expected.entry(t.to_owned()).or_default() += 1;
        }
        let mut got: std::collections::BTreeMap<String, usize> = Default::default();
        let mut all_jsonpath = true;
        for t in case_templates(case) {
            let lang = t
                .get("defaultExpressionLanguage")
                .and_then(Value::as_str)
                .unwrap_or("JsonPath");
            let Some(type_match) = t.get("typeMatchExpression") else {
                continue; // an invalid entry (mixed-validity case): not loadable
            };
            let expr = match type_match {
                Value::String(s) if is_jsonpath(lang) => s.clone(),
                Value::Object(o)
                    if is_jsonpath(o.get("language").and_then(Value::as_str).unwrap_or(lang)) =>
                {
                    o.get("value")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                }
                _ => {
                    all_jsonpath = false;
                    continue;
                }
            };
            let n = path(&expr)
                .select_all(&message)
                .unwrap_or_else(|e| panic!("{id}: {expr}: {e}"))
                .len();
            let name = t.get("typeName").and_then(Value::as_str).unwrap_or("?");
            if n > 0 {
                *got.entry(name.to_owned()).or_default() += n;
            }
        }
        if !all_jsonpath {
            continue;
        }
        assert_eq!(got, expected, "case {id}");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} cases checked");
}

// ---------------------------------------------------------------------------------------------
// No panics on arbitrary input.

mod fuzz {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::super::JsonPath;

    fn docs() -> Vec<Value> {
        vec![
            json!(null),
            json!(1),
            json!("s"),
            json!([1, "2", 3.5, null, true, [], {}]),
            json!({"a": {"b": [1, {"c": "x", "-d": -1}], "e": null}, "f": [[0]], "g": "2020-01-01T00:00:00Z",
                   "h": u64::MAX, "i": 1e300, "j": "abc", "": {" ": 1}}),
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-1e6f64..1e6).prop_map(|f| json!(f)),
            "[a-c0-9 ]{0,3}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(("[a-c]{1,2}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Tokens that make up JSONPath-ish strings.
    fn arb_path() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("$".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("[".to_owned()),
            Just("]".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just("[?(".to_owned()),
            Just(")]".to_owned()),
            Just("@".to_owned()),
            Just("*".to_owned()),
            Just("'a'".to_owned()),
            Just("\"b\"".to_owned()),
            Just(",".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("==".to_owned()),
            Just("===".to_owned()),
            Just("!=".to_owned()),
            Just("<".to_owned()),
            Just(">=".to_owned()),
            Just("=~".to_owned()),
            Just("/a.*/i".to_owned()),
            Just("&&".to_owned()),
            Just("||".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("'x\\".to_owned()),
            "-?[0-9]{1,3}".prop_map(|s| s),
            "[0-9]\\.[0-9]e?".prop_map(|s| s),
            "[a-c]{1,2}".prop_map(|s| s),
        ];
        prop::collection::vec(token, 0..16).prop_map(|t| t.concat())
    }

    /// Evaluates both ways (must not panic) and checks they agree: when both succeed,
    /// `select_one` is the single result of `select_all`.
    fn check_consistent(p: &JsonPath, doc: &Value) -> Result<(), TestCaseError> {
        let all = p.select_all(doc);
        let one = p.select_one(doc);
        match (&all, &one) {
            (Ok(all), Ok(one)) => {
                prop_assert!(
                    all.len() <= 1,
                    "select_one succeeded on {} results",
                    all.len()
                );
                prop_assert_eq!(all.first().copied(), *one);
            }
            (Ok(all), Err(e)) => {
                prop_assert!(
                    all.len() > 1 || !matches!(e, super::super::JsonPathError::MultipleTokens)
                );
            }
            _ => {}
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_strings_never_panic(s in "\\PC{0,40}") {
            if let Ok(p) = JsonPath::parse(&s) {
                prop_assert_eq!(p.source(), s.as_str());
                for d in docs() {
                    check_consistent(&p, &d)?;
                }
            }
        }

        #[test]
        fn scan_exists_shortcut_on_random_documents(
            doc in arb_json(),
            names in prop::collection::vec("[a-c]{1,2}", 1..3),
            budget in 0u64..120,
        ) {
            let p = format!("$..[?(@{})]", names.join("."));
            let jp = JsonPath::parse(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(jp.select_all(&doc), jp.select_all_general(&doc));
            prop_assert_eq!(jp.select_one(&doc).ok(), {
                let all = jp.select_all_general(&doc).unwrap_or_default();
                (all.len() <= 1).then(|| all.first().copied())
            });
            prop_assert_eq!(
                jp.select_all_budget_mode(&doc, budget, true),
                jp.select_all_budget_mode(&doc, budget, false)
            );
        }

        #[test]
        fn random_paths_never_panic(s in arb_path(), doc in arb_json()) {
            if let Ok(p) = JsonPath::parse(&s) {
                check_consistent(&p, &doc)?;
                for d in docs() {
                    check_consistent(&p, &d)?;
                }
            }
        }
    }
}

/// The plain-path shortcut gives exactly what the general evaluator gives.
#[test]
fn plain_paths_shortcut_matches_the_general_evaluator() {
    let docs = [
        json!({"a": {"b": {"c": 1}}, "x": [1, 2], "n": null}),
        json!([{"a": 1}]),
        json!("scalar"),
        json!({"a": [{"b": 2}], "a-b": {"c-d": true}, "": {"": 3}}),
        json!({"Body": {"heartRate": 70}, "Properties": {"iothub-creation-time-utc": "2024-01-01T00:00:00Z"}}),
    ];
    let paths = [
        "$",
        "$.a",
        "$.a.b",
        "$.a.b.c",
        "$.a.b.c.d",
        "$.x",
        "$.n",
        "$.n.m",
        "$['a']['b']",
        "$.a-b.c-d",
        "$.Body.heartRate",
        "$.Properties.iothub-creation-time-utc",
        "$.missing",
        "a.b",
        "$['']",
    ];
    for d in &docs {
        for p in paths {
            let jp = JsonPath::parse(p).unwrap();
            assert_eq!(jp.select_all(d), jp.select_all_general(d), "{p} on {d}");
        }
    }
}

/// The `..[?(@name...)]` shortcut gives the general evaluator's tokens, order and errors, and
/// runs out of work budget at exactly the same budgets.
#[test]
fn scan_exists_shortcut_matches_the_general_evaluator() {
    let docs = [
        json!({"a": {"b": {"c": 1}}, "x": [1, {"a": 2}, [{"a": {"b": 3}}]], "n": null}),
        json!([{"a": 1}, {"b": {"a": {"b": null}}}]),
        json!("scalar"),
        json!({"a": {"a": {"a": 1}}}),
        json!({"Body": {"heartRate": 70, "x": [{"heartRate": 71}]}, "Properties": {}}),
        json!([[[]], {}, {"b": 1}]),
    ];
    let paths = [
        "$..[?(@a)]",
        "$..[?(@.a)]",
        "$..[?(@a.b)]",
        "$..[?(@.a.b)]",
        "$..[?(@heartRate)]",
        "$..[?(@Body.heartRate)]",
        "$..[?(@['a'])]",
    ];
    for d in &docs {
        for p in paths {
            let jp = JsonPath::parse(p).unwrap();
            assert!(jp.scan_exists.is_some(), "{p} takes the shortcut");
            assert_eq!(jp.select_all(d), jp.select_all_general(d), "{p} on {d}");
            for budget in 0..60 {
                assert_eq!(
                    jp.select_all_budget_mode(d, budget, true),
                    jp.select_all_budget_mode(d, budget, false),
                    "{p} on {d} with budget {budget}"
                );
            }
        }
    }
    for p in [
        "$..[?(@)]",
        "$..[?(@a == 1)]",
        "$..[?(@a && @b)]",
        "$..[?(@..a)]",
        "$.x..[?(@a)]",
        "$..[?(@a[0])]",
    ] {
        assert!(JsonPath::parse(p).unwrap().scan_exists.is_none(), "{p}");
    }
}
