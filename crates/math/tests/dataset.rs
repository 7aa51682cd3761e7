//! JSONL datasets: presets, field maps, malformed rows reported by line.

use std::io::Write;

use artist_math::{AnswerField, BadRow, DatasetError, DatasetFormat, MathDataset, equivalent};

fn load(text: &str, format: &str) -> Result<MathDataset, DatasetError> {
    MathDataset::from_jsonl_str(text, "test.jsonl", &format.parse()?)
}

fn answers(d: &MathDataset) -> Vec<&str> {
    d.problems.iter().map(|p| p.answer.as_str()).collect()
}

#[test]
fn numina_takes_the_last_box_of_the_solution() {
    let text = r#"{"problem": "1+1?", "solution": "First \\boxed{3}, no: \\boxed{2}."}
{"problem": "Half?", "solution": "It is \\boxed{\\frac{1}{2}}", "messages": []}"#;
    let d = load(text, "numina").unwrap();
    assert_eq!(answers(&d), ["2", "\\frac{1}{2}"]);
    assert_eq!(d.problems[1].problem, "Half?");
    assert_eq!(d.problems[1].line, 2);
    assert!(d.bad_rows.is_empty());
}

#[test]
fn math500_reads_problem_and_answer() {
    let text = r#"{"problem": "p1", "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "level": 2}"#;
    let d = load(text, "math500").unwrap();
    assert_eq!(answers(&d), ["\\left( 3, \\frac{\\pi}{2} \\right)"]);
    assert!(equivalent(&d.problems[0].answer, "(3, \\frac{\\pi}{2})"));
}

#[test]
fn aime_and_amc_take_question_or_problem_and_numeric_answers() {
    let text = r#"{"problem": "a", "answer": 204}
{"question": "b", "answer": "033"}
{"question": "c", "answer": 142.0}"#;
    for preset in ["aime", "amc"] {
        let d = load(text, preset).unwrap();
        assert_eq!(answers(&d), ["204", "033", "142.0"], "{preset}");
        assert_eq!(d.problems[1].problem, "b");
        assert!(equivalent(&d.problems[1].answer, "33"));
        assert!(equivalent(&d.problems[2].answer, "142"));
    }
}

#[test]
fn olympiad_joins_its_final_answer_list() {
    let text = r#"{"question": "q1", "final_answer": ["$\\frac{1}{2}$"]}
{"question": "q2", "final_answer": ["$3$", "$-1$"]}
{"question": "q3", "final_answer": []}"#;
    let d = load(text, "olympiad").unwrap();
    assert_eq!(answers(&d), ["$\\frac{1}{2}$", "$3$, $-1$"]);
    assert!(equivalent(&d.problems[1].answer, "-1, 3"));
    assert_eq!(d.bad_rows, [BadRow { line: 3, reason: "field \"final_answer\" is an empty list".into() }]);
}

#[test]
fn field_maps_name_any_fields() {
    let f: DatasetFormat = "problem=question,answer=final_answer".parse().unwrap();
    assert_eq!(f.problem, ["question"]);
    assert_eq!(f.answer, AnswerField::Answer("final_answer".into()));
    let f: DatasetFormat = "problem=prompt, solution=worked".parse().unwrap();
    assert_eq!(f.answer, AnswerField::Solution("worked".into()));
    let d = MathDataset::from_jsonl_str(r#"{"prompt": "x?", "worked": "so \\boxed{5}"}"#, "t", &f).unwrap();
    assert_eq!(answers(&d), ["5"]);
    for bad in
        ["", "mmlu", "problem=q", "answer=a", "problem=q,answer=", "problem=q,answer=a,answer=b", "problem=q;answer=a"]
    {
        let err = bad.parse::<DatasetFormat>().unwrap_err();
        assert!(matches!(err, DatasetError::Format(_)), "{bad:?}");
        assert!(err.to_string().contains("problem=question,answer=final_answer"), "{err}");
    }
}

#[test]
fn malformed_rows_are_counted_with_their_line_numbers() {
    let text = [
        r#"{"problem": "ok", "answer": "1"}"#,
        r#"{"problem": "broken", "answer": "#,
        "",
        r#"{"question": "wrong field", "answer": "2"}"#,
        r#"{"problem": 7, "answer": "3"}"#,
        r#"{"problem": "p", "answer": {"value": 4}}"#,
        r#"["not", "an", "object"]"#,
        r#"{"problem": "p", "answer": "   "}"#,
        r#"{"problem": "fine", "answer": "5"}"#,
    ]
    .join("\n");
    let d = load(&text, "math500").unwrap();
    assert_eq!(answers(&d), ["1", "5"]);
    assert_eq!(d.problems[1].line, 9);
    let lines: Vec<usize> = d.bad_rows.iter().map(|b| b.line).collect();
    assert_eq!(lines, [2, 4, 5, 6, 7, 8], "the blank line 3 is skipped, not counted");
    let reasons: Vec<String> = d.bad_rows.iter().map(ToString::to_string).collect();
    assert!(reasons[0].starts_with("line 2: not JSON"), "{}", reasons[0]);
    assert_eq!(reasons[1], "line 4: missing field \"problem\"");
    assert_eq!(reasons[2], "line 5: field \"problem\" is a number, expected a string");
    assert!(reasons[3].starts_with("line 6: field \"answer\" is an object"), "{}", reasons[3]);
    assert_eq!(reasons[4], "line 7: expected a JSON object, found a list");
    assert_eq!(reasons[5], "line 8: field \"answer\" is empty");
}

#[test]
fn a_solution_without_a_box_is_a_bad_row() {
    let text =
        "{\"problem\": \"p\", \"solution\": \"no box here\"}\n{\"problem\": \"q\", \"solution\": \"\\\\boxed{1}\"}";
    let d = load(text, "numina").unwrap();
    assert_eq!(d.bad_rows[0].to_string(), "line 1: field \"solution\" has no \\boxed{...} answer");
    assert_eq!(answers(&d), ["1"]);
}

#[test]
fn no_usable_row_is_an_error_naming_the_first_problem() {
    let err = load("{\"q\": 1}\nnot json\n", "math500").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatasetError::NoUsableRows { bad: 2, .. }), "{msg}");
    assert!(msg.contains("test.jsonl") && msg.contains("line 1: missing field \"problem\""), "{msg}");
    assert!(matches!(load("", "math500"), Err(DatasetError::NoUsableRows { bad: 0, .. })));
}

#[test]
fn invalid_utf8_is_a_bad_row() {
    let mut bytes = b"{\"problem\": \"a\", \"answer\": \"1\"}\n".to_vec();
    bytes.extend_from_slice(b"{\"problem\": \"\xff\", \"answer\": \"2\"}\n");
    let d = MathDataset::from_reader(&bytes[..], "t", &DatasetFormat::math500()).unwrap();
    assert_eq!(d.bad_rows, [BadRow { line: 2, reason: "not UTF-8".into() }]);
}

#[test]
fn loads_files_and_names_missing_ones() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, r#"{{"problem": "p", "answer": "\\frac{{1}}{{2}}"}}"#).unwrap();
    let d = MathDataset::load(f.path(), &DatasetFormat::math500()).unwrap();
    assert_eq!(answers(&d), ["\\frac{1}{2}"]);
    let missing = f.path().with_extension("missing");
    let err = MathDataset::load(&missing, &DatasetFormat::math500()).unwrap_err();
    assert!(matches!(err, DatasetError::Io { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
}

/// A Parquet file as `datasets` writes it (Snappy, list-valued `final_answer`), made by
/// pyarrow: rows read as objects of their columns; a row with a null problem is counted
/// and named by its row number.
#[test]
fn parquet_rows_are_read_like_json_lines() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/math/mini-olympiad.parquet");
    let ds = artist_math::MathDataset::load(&path, &"olympiad".parse().unwrap()).unwrap();
    let got: Vec<(usize, &str, &str)> =
        ds.problems.iter().map(|p| (p.line, p.problem.as_str(), p.answer.as_str())).collect();
    assert_eq!(
        got,
        vec![(1, "What is $3^4$?", "81"), (2, "Solve $x+2=5$.", "3"), (4, "Find all $x$ with $x^2=4$.", "-2, 2")]
    );
    assert_eq!(ds.bad_rows.len(), 1);
    assert_eq!(ds.bad_rows[0].line, 3);
    // A file that is not Parquet is an error naming it.
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("x.parquet");
    std::fs::write(&fake, b"not parquet").unwrap();
    let e = artist_math::MathDataset::load(&fake, &"olympiad".parse().unwrap()).unwrap_err().to_string();
    assert!(e.contains("x.parquet") && e.contains("Parquet"), "{e}");
}
