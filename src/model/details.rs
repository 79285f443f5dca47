//! Whether two statements differ in a detail that a similarity score
//! cannot be trusted with (numbers, negations, a swapped word), and the
//! function words that never tell statements apart.

/// True when two texts differ in a detail a similarity score cannot be trusted
/// with, so that they are never duplicates however similar their vectors:
/// * their numbers differ (dates, amounts, times: "March 3" / "March 5");
/// * their negations differ ("allergic" / "not allergic");
/// * a word was swapped: each has a content word the other lacks ("Monday" /
///   "Tuesday"). Pure rewording with the same words, or an added filler word,
///   still counts as the same statement.
pub fn details_differ(a: &str, b: &str) -> bool {
    let (a, b) = (Details::of(a), Details::of(b));
    a.numbers != b.numbers
        || a.negations != b.negations
        || (a.words.difference(&b.words).next().is_some()
            && b.words.difference(&a.words).next().is_some())
}

struct Details {
    numbers: Vec<String>,
    negations: usize,
    words: std::collections::BTreeSet<String>,
}

impl Details {
    fn of(text: &str) -> Self {
        let mut details = Self {
            numbers: Vec::new(),
            negations: 0,
            words: std::collections::BTreeSet::new(),
        };
        for word in text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’')) {
            let word = word.to_lowercase().replace('’', "'");
            if word.is_empty() {
                continue;
            }
            if word.chars().any(|c| c.is_ascii_digit()) {
                details.numbers.push(word);
            } else if NEGATIONS.contains(&word.as_str()) || word.ends_with("n't") {
                details.negations += 1;
            } else if !is_stopword(&word) {
                details.words.insert(word);
            }
        }
        details.numbers.sort();
        details
    }
}

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "nor", "none", "nothing", "nobody", "neither", "cannot", "without",
];

/// English function words: too common to rank by or to tell statements apart.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.contains(&word)
}

const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "but", "by", "did", "do", "does", "for",
    "from", "had", "has", "have", "he", "her", "him", "his", "how", "i", "if", "in", "into", "is",
    "it", "its", "me", "my", "of", "on", "or", "our", "she", "so", "that", "the", "their", "them",
    "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_numbers_and_negations_are_details() {
        assert!(details_differ(
            "I am allergic to peanuts",
            "I am not allergic to peanuts"
        ));
        assert!(details_differ("I like it", "I don't like it"));
        assert!(details_differ("Flight on March 3", "Flight on March 5"));
        assert!(details_differ("Budget 2000 EUR", "Budget 2500 EUR"));
        assert!(!details_differ("Flight on March 3!", "flight on march 3"));
        assert!(!details_differ(
            "I prefer window seats",
            "I PREFER window seats."
        ));
    }
}
