//! Reading the answer out of a completion, and judging it end to end.

use artist_math::{ExtractOptions, equivalent, extract_answer, extract_answer_with, last_boxed};

#[test]
fn answer_block_wins_and_the_last_one_counts() {
    let c = "<think>try 41</think><answer>41</answer> no wait <answer> 42 </answer>";
    assert_eq!(extract_answer(c).as_deref(), Some("42"));
    let c = "<think>\\boxed{1}</think><python>print(2)</python><output>2</output><answer>2</answer>";
    assert_eq!(extract_answer(c).as_deref(), Some("2"));
}

#[test]
fn boxed_inside_the_block_is_the_answer() {
    let c = "<answer>The area is $\\boxed{\\frac{3\\pi}{4}}$ square units.</answer>";
    assert_eq!(extract_answer(c).as_deref(), Some("\\frac{3\\pi}{4}"));
    let c = "<answer>\\boxed{1} or rather \\boxed{\\left(2, \\frac{1}{2}\\right)}</answer>";
    assert_eq!(extract_answer(c).as_deref(), Some("\\left(2, \\frac{1}{2}\\right)"));
}

#[test]
fn without_a_block_the_last_box_counts() {
    let c = "First \\boxed{3}. Then, correcting: the answer is \\boxed{\\{1, 2\\}}.";
    assert_eq!(extract_answer(c).as_deref(), Some("\\{1, 2\\}"));
    assert_eq!(extract_answer("so \\fbox{x^{2}} it is").as_deref(), Some("x^{2}"));
    assert_eq!(extract_answer("Final: \\boxed 7. Done").as_deref(), Some("7"));
    assert_eq!(extract_answer("$\\boxed 12$").as_deref(), Some("12"));
}

#[test]
fn braces_nest_and_escaped_braces_do_not_count() {
    let c = "\\boxed{\\frac{\\sqrt{\\frac{1}{2}}}{\\{3\\}}}";
    assert_eq!(last_boxed(c), Some("\\frac{\\sqrt{\\frac{1}{2}}}{\\{3\\}}"));
    // An unclosed box does not hide the earlier good one.
    assert_eq!(last_boxed("\\boxed{5} and then \\boxed{6"), Some("5"));
    assert_eq!(last_boxed("\\boxedfoo{5}"), None);
}

#[test]
fn an_unclosed_answer_block_is_no_answer() {
    assert_eq!(extract_answer("<answer>42"), None);
    // ... but a box elsewhere still counts.
    assert_eq!(extract_answer("\\boxed{7} <answer>42").as_deref(), Some("7"));
    assert_eq!(extract_answer("<answer>   </answer> \\boxed{9}").as_deref(), Some("9"));
}

#[test]
fn last_number_fallback_is_opt_in() {
    let c = "We get 3 apples, then 1,250.5 more.";
    assert_eq!(extract_answer(c), None);
    let fallback = ExtractOptions { last_number_fallback: true };
    assert_eq!(extract_answer_with(c, fallback).as_deref(), Some("1,250.5"));
    assert_eq!(extract_answer_with("the result is -7.", fallback).as_deref(), Some("-7"));
    assert_eq!(extract_answer_with("no digits here", fallback), None);
    // A box or an answer block still comes first.
    assert_eq!(extract_answer_with("\\boxed{2} then 99", fallback).as_deref(), Some("2"));
}

#[test]
fn extracted_answers_judge_correctly() {
    let cases = [
        ("<answer>\\boxed{\\dfrac{3}{4}}</answer>", "0.75", true),
        ("<answer>x = 5</answer>", "5", true),
        ("<answer>(B)</answer>", "B", true),
        ("The answer is \\boxed{14{,}916}.", "14916", true),
        ("<answer>$\\frac{1}{2}$</answer>", "\\frac{1}{3}", false),
    ];
    for (completion, gold, want) in cases {
        let pred = extract_answer(completion).unwrap_or_default();
        assert_eq!(equivalent(gold, &pred), want, "{completion:?} against {gold:?}");
    }
    assert!(extract_answer("no answer at all").is_none());
}
