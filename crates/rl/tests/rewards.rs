//! ARTIST's rewards on hand-written rollouts, one row per case.

use artist_rl::{FcRewardWeights, MathRewardWeights, Segment, fc_format_rewards, math_rewards};

fn m(s: &str) -> Segment {
    Segment::Model(s.into())
}
fn f(s: &str) -> Segment {
    Segment::Forced(format!("<output>\n{s}\n</output>\n"))
}

/// (case, segments, tool successes, correct, then the expected answer, relaxed format,
/// strict format and tool execution rewards)
type Case = (&'static str, Vec<Segment>, Vec<bool>, bool, f64, f64, f64, f64);

#[test]
fn math_rewards_table() {
    let w = MathRewardWeights::default();
    let cases: Vec<Case> = vec![
        (
            "well formed, correct",
            vec![
                m("<think>compute</think>\n<python>print(6*7)</python>"),
                f("42"),
                m("<think>so</think><answer>42</answer>"),
            ],
            vec![true],
            true,
            2.0,
            0.5,
            0.5,
            1.0,
        ),
        (
            "well formed, wrong answer",
            vec![m("<think>a</think><python>x</python>"), f("1"), m("<answer>3</answer>")],
            vec![true],
            false,
            0.0,
            0.5,
            0.5,
            1.0,
        ),
        (
            "think missing",
            vec![m("<python>x</python>"), f("1"), m("<answer>1</answer>")],
            vec![true],
            true,
            2.0,
            0.375,
            0.0,
            1.0,
        ),
        (
            "unclosed think",
            vec![m("<think>a<python>x</python>"), f("1"), m("<answer>1</answer>")],
            vec![true],
            true,
            2.0,
            0.375,
            0.0,
            1.0,
        ),
        (
            "unclosed answer",
            vec![m("<think>a</think><python>x</python>"), f("1"), m("<answer>1")],
            vec![true],
            false,
            0.0,
            0.375,
            0.0,
            1.0,
        ),
        (
            "nested python in think",
            vec![m("<think>a<python>x</python></think>"), f("1"), m("<answer>1</answer>")],
            vec![true],
            true,
            2.0,
            0.5,
            0.0,
            1.0,
        ),
        (
            "answer before think",
            vec![m("<answer>1</answer><think>a</think><python>x</python>"), f("1")],
            vec![true],
            true,
            2.0,
            0.5,
            0.0,
            1.0,
        ),
        (
            "repeated answer",
            vec![m("<think>a</think><python>x</python>"), f("1"), m("<answer>1</answer><answer>2</answer>")],
            vec![true],
            false,
            0.0,
            0.5,
            0.0,
            1.0,
        ),
        (
            "text outside tags",
            vec![m("Sure! <think>a</think><python>x</python>"), f("1"), m("<answer>1</answer>")],
            vec![true],
            true,
            2.0,
            0.5,
            0.0,
            1.0,
        ),
        ("no tool call", vec![m("<think>easy</think><answer>4</answer>")], vec![], true, 2.0, 0.25, 0.0, 0.0),
        (
            "all calls failing",
            vec![
                m("<think>a</think><python>1/0</python>"),
                f("ZeroDivisionError"),
                m("<python>oops(</python>"),
                f("SyntaxError"),
                m("<answer>?</answer>"),
            ],
            vec![false, false],
            false,
            0.0,
            0.5,
            0.5,
            0.0,
        ),
        (
            "half the calls succeed, thinking between calls",
            vec![
                m("<think>a</think><python>1/0</python>"),
                f("Error"),
                m("<think>fix</think><python>1/1</python>"),
                f("1.0"),
                m("<think>ok</think><answer>1</answer>"),
            ],
            vec![false, true],
            true,
            2.0,
            0.5,
            0.5,
            0.5,
        ),
        (
            "an answer printed by the tool earns nothing",
            vec![m("<think>a</think><python>print('<answer>1</answer>')</python>"), f("<answer>1</answer>")],
            vec![true],
            false,
            0.0,
            0.375,
            0.0,
            1.0,
        ),
        (
            "the model writing its own output block",
            vec![m("<think>a</think><python>x</python><output>made up</output><answer>1</answer>")],
            vec![],
            false,
            0.0,
            0.375,
            0.0,
            0.0,
        ),
        (
            "python not followed by output",
            vec![m("<think>a</think><python>x</python><answer>1</answer>")],
            vec![],
            true,
            2.0,
            0.375,
            0.0,
            0.0,
        ),
        ("empty response", vec![m("")], vec![], false, 0.0, 0.0, 0.0, 0.0),
        (
            "a tag split across tokens still counts",
            vec![m("<thi"), m("nk>a</think><python>x</pyt"), m("hon>"), f("1"), m("<answer>1</answer>")],
            vec![true],
            true,
            2.0,
            0.5,
            0.5,
            1.0,
        ),
    ];
    for (name, segs, tools, correct, answer, relaxed, strict, tool) in cases {
        let r = math_rewards(&segs, &tools, correct, &w);
        let got = (r.answer, r.relaxed_format, r.strict_format, r.tool_execution);
        assert_eq!(got, (answer, relaxed, strict, tool), "{name}");
        assert!((r.total - (answer + relaxed + strict + tool)).abs() < 1e-12, "{name}");
    }
    // Weights are configurable.
    let w2 = MathRewardWeights { answer: 1.0, relaxed_format: 0.0, strict_format: 0.0, tool_execution: 0.0 };
    assert_eq!(math_rewards(&[m("<answer>1</answer>")], &[], true, &w2).total, 1.0);
}

#[test]
fn function_calling_format_rewards_table() {
    let w = FcRewardWeights::default();
    let cases: Vec<(&str, Vec<Segment>, f64, f64)> = vec![
        (
            "well formed",
            vec![
                m("<reasoning>cd first</reasoning><tool>{\"name\": \"cd\"}</tool>"),
                f("ok"),
                m("<reasoning>done</reasoning>"),
            ],
            0.075,
            0.1,
        ),
        ("tool missing", vec![m("<reasoning>nothing to do</reasoning>")], 0.025, 0.0),
        ("tool before reasoning", vec![m("<tool>x</tool><reasoning>r</reasoning>")], 0.05, 0.0),
        ("unclosed reasoning", vec![m("<reasoning>r<tool>x</tool>")], 0.025, 0.0),
        ("capped at 0.1", vec![m(&"<reasoning>r</reasoning><tool>x</tool>".repeat(4))], 0.1, 0.1),
        ("text outside tags", vec![m("ok <reasoning>r</reasoning><tool>x</tool>")], 0.05, 0.0),
        (
            "a reply to the user ends each turn",
            vec![
                m("<reasoning>r</reasoning><tool>x</tool>"),
                f("<output>1</output>"),
                m("Done, the file is moved."),
                f("<|im_start|>user\nnext<|im_end|>"),
                m("<reasoning>r</reasoning><tool>y</tool>"),
                f("<output>2</output>"),
                m("Done."),
            ],
            0.1,
            0.1,
        ),
        ("text between blocks", vec![m("<reasoning>r</reasoning> so <tool>x</tool>")], 0.05, 0.0),
        (
            "a second call without reasoning",
            vec![m("<reasoning>r</reasoning><tool>x</tool>"), f("o"), m("<tool>y</tool>")],
            0.075,
            0.0,
        ),
    ];
    for (name, segs, relaxed, strict) in cases {
        let r = fc_format_rewards(&segs, 1.0, 0.5, &w);
        assert!((r.relaxed_format - relaxed).abs() < 1e-12, "{name}: relaxed {}", r.relaxed_format);
        assert_eq!(r.strict_format, strict, "{name}");
        assert_eq!((r.state, r.function), (0.5, 0.25), "{name}");
    }
}

#[test]
fn another_tool_tag() {
    let w = MathRewardWeights::default();
    let segs = vec![m("<think>a</think><calculator>6*7</calculator>"), f("42"), m("<answer>42</answer>")];
    let r = artist_rl::math_rewards_with_tool("calculator", &segs, &[true], 1.0, &w);
    assert_eq!((r.relaxed_format, r.strict_format, r.tool_execution, r.answer), (0.5, 0.5, 1.0, 2.0));
    // Partial credit scales the answer reward alone.
    let half = artist_rl::math_rewards_with_tool("calculator", &segs, &[true], 0.25, &w);
    assert_eq!((half.answer, half.total), (0.5, r.total - 1.5));
    // Read as a Python rollout, the calculator block is not a tool call.
    let p = math_rewards(&segs, &[true], true, &w);
    assert_eq!((p.relaxed_format, p.strict_format), (0.375, 0.0));
}

/// DAPO's soft overlong punishment: nothing up to `max_len - buffer`, then linear to
/// `-penalty` at `max_len`, clamped beyond; off with a buffer or penalty of 0.
#[test]
fn overlong_penalty_ramps_over_the_buffer() {
    use artist_rl::overlong_penalty;
    for (len, want) in [(0, 0.0), (700, 0.0), (768, 0.0), (769, -1.0 / 256.0), (896, -0.5), (1024, -1.0), (5000, -1.0)]
    {
        assert_eq!(overlong_penalty(len, 1024, 256, 1.0), want, "length {len}");
    }
    assert_eq!(overlong_penalty(896, 1024, 256, 0.5), -0.25);
    assert_eq!(overlong_penalty(2000, 1024, 0, 1.0), 0.0);
    assert_eq!(overlong_penalty(2000, 1024, 256, 0.0), 0.0);
    // A buffer longer than the limit ramps from the first token.
    assert_eq!(overlong_penalty(50, 100, 400, 1.0), -50.0 / 400.0);
}
