//! Majority voting over several answers to one problem (self-consistency, maj@k).

use crate::equiv::{answers_equal, parse_answer};
use crate::expr::Node;

/// The answer most of `answers` agree on, as the index of its first occurrence; `None`
/// when no answer can be read. Answers are grouped by [`crate::equivalent`]'s equality
/// (`\frac12`, `0.5` and `1/2` are one vote), each joining the first group whose first
/// answer it equals; `None` and unreadable answers do not vote. On a tie the group that
/// appeared first wins, so the result does not depend on anything but the order given.
pub fn majority<S: AsRef<str>>(answers: &[Option<S>]) -> Option<usize> {
    // (index of the group's first answer, its parsed form, votes)
    let mut groups: Vec<(usize, Node, usize)> = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let Some(node) = answer.as_ref().and_then(|a| parse_answer(a.as_ref()).ok()) else { continue };
        match groups.iter_mut().find(|(_, first, _)| answers_equal(first, &node)) {
            Some(group) => group.2 += 1,
            None => groups.push((i, node, 1)),
        }
    }
    // `max_by_key` keeps the last of equal maxima; reversed, that is the first group.
    groups.iter().rev().max_by_key(|g| g.2).map(|g| g.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(answers: &[Option<&str>]) -> Option<usize> {
        majority(answers)
    }

    #[test]
    fn equal_forms_vote_together() {
        // 1/2 in three spellings outvotes 3 twice, although 3 comes first.
        let a = [Some("3"), Some("\\frac12"), Some("3"), Some("0.5"), Some("1/2")];
        assert_eq!(vote(&a), Some(1));
        // Without the spellings counted as one, 3 would win.
        let a = [Some("3"), Some("\\frac12"), Some("3"), Some("7")];
        assert_eq!(vote(&a), Some(0));
    }

    #[test]
    fn ties_go_to_the_group_seen_first() {
        assert_eq!(vote(&[Some("2"), Some("5"), Some("5"), Some("2")]), Some(0));
        assert_eq!(vote(&[Some("5"), Some("2"), Some("2"), Some("5")]), Some(0));
        assert_eq!(vote(&[Some("x+1"), Some("(1+x)"), Some("y"), Some("y")]), Some(0));
    }

    #[test]
    fn missing_and_unreadable_answers_do_not_vote() {
        assert_eq!(vote(&[None, None]), None);
        assert_eq!(vote(&[]), None);
        assert_eq!(vote(&[None, Some(""), Some("   "), Some("4")]), Some(3));
        // One readable answer beats any number of missing ones.
        assert_eq!(vote(&[None, None, None, Some("\\{1,2\\}")]), Some(3));
        let deep = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert_eq!(vote(&[Some(deep.as_str()), Some("9")]), Some(1));
    }

    #[test]
    fn words_and_choices_vote_by_their_normal_form() {
        assert_eq!(vote(&[Some("(B)"), Some("C"), Some("B"), Some("\\text{(C)}"), Some("\\textbf{(B) } 12")]), Some(0));
        assert_eq!(vote(&[Some("\\text{Evelyn}"), Some("Bob"), Some("evelyn")]), Some(0));
    }
}
