//! Tokenizers: sacrebleu's 13a (HF evaluate BLEU) and NLTK's `word_tokenize` (METEOR).
//!
//! `word_tokenize` = Punkt sentence splitting ([`super::punkt`]) + `NLTKWordTokenizer` on each
//! sentence. NLTK 3.10 runs its tokenizer patterns through the third-party `regex` module, whose
//! `\w`, `\s`, `\d` and `\b` follow Unicode properties like Rust's `regex` crate; the contraction
//! patterns use the standard `re` module, whose `\w` is Python's `str.isalnum()` + `_`
//! (`[\p{L}\p{N}_]` here) and whose `\s` is `str.isspace()`. Differences can only come from
//! characters whose Unicode properties changed between Python's and Rust's Unicode versions.

use fancy_regex::Regex;

use super::py_split;

/// sacrebleu / evaluate `Tokenizer13a` followed by `str.split()`.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let s: Vec<char> = format!(" {line} ").chars().collect();
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 "
    let mut a = Vec::with_capacity(s.len() * 2);
    for &c in &s {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            a.extend([' ', c, ' ']);
        } else {
            a.push(c);
        }
    }
    // ([^0-9])([\.,]) -> "\1 \2 "
    let b = sub_pairs(
        &a,
        |x, y| !x.is_ascii_digit() && matches!(y, '.' | ','),
        |x, y, o| o.extend([x, ' ', y, ' ']),
    );
    // ([\.,])([^0-9]) -> " \1 \2"
    let c = sub_pairs(
        &b,
        |x, y| matches!(x, '.' | ',') && !y.is_ascii_digit(),
        |x, y, o| o.extend([' ', x, ' ', y]),
    );
    // ([0-9])(-) -> "\1 \2 "
    let d = sub_pairs(
        &c,
        |x, y| x.is_ascii_digit() && y == '-',
        |x, y, o| o.extend([x, ' ', y, ' ']),
    );
    let d: String = d.into_iter().collect();
    py_split(&d).map(str::to_string).collect()
}

/// `re.sub` of a two-character pattern: scans left to right, non-overlapping.
fn sub_pairs(
    s: &[char],
    is_match: impl Fn(char, char) -> bool,
    emit: impl Fn(char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(s.len() + 8);
    let mut i = 0;
    while i < s.len() {
        if i + 1 < s.len() && is_match(s[i], s[i + 1]) {
            emit(s[i], s[i + 1], &mut out);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Python's (standard `re`) `\w`.
const PY_W: &str = r"[\p{L}\p{N}_]";
/// Python's (standard `re`) `\s`.
const PY_S: &str = r"[\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]";

/// A cheap test that is false only when a pattern cannot match.
type Trigger = fn(&str) -> bool;

/// A substitution with a cheap test that is false only when the pattern cannot match.
struct Rule {
    re: Regex,
    rep: &'static str,
    may_match: Trigger,
}

struct Treebank {
    rules: Vec<Rule>,
    ending: Vec<Rule>,
    contractions: Vec<Rule>,
}

fn re(p: &str) -> Regex {
    // The patterns are constants of this file; a failure is a programming error caught by the
    // unit tests, never a user-input condition.
    Regex::new(p).unwrap_or_else(|e| panic!("bad built-in pattern {p}: {e}"))
}

fn any_of(s: &str, chars: &[char]) -> bool {
    s.contains(chars)
}

thread_local! {
    // One compiled set per thread: regex caches are fastest when not shared between threads.
    static TREEBANK: Treebank = build_treebank();
}

fn build_treebank() -> Treebank {
    {
        let rule = |p: &str, rep: &'static str, may_match: fn(&str) -> bool| Rule {
            re: re(p),
            rep,
            may_match,
        };
        // stdlib-re word boundary for the contraction patterns
        let b = format!("(?:(?<={PY_W})(?!{PY_W})|(?<!{PY_W})(?={PY_W}))");
        // (?i) also folds non-ASCII letters (e.g. U+017F, U+212A) onto ASCII ones, so the
        // substring pre-test is only trusted for ASCII text.
        fn has(s: &str, words: &[&str]) -> bool {
            if !s.is_ascii() {
                return true;
            }
            let l = s.to_ascii_lowercase();
            words.iter().any(|w| l.contains(w))
        }
        let c2: [(&str, Trigger); 7] = [
            ("(can)(not)", |s| has(s, &["cannot"])),
            ("(d)('ye)", |s| has(s, &["d'ye"])),
            ("(gim)(me)", |s| has(s, &["gimme"])),
            ("(gon)(na)", |s| has(s, &["gonna"])),
            ("(got)(ta)", |s| has(s, &["gotta"])),
            ("(lem)(me)", |s| has(s, &["lemme"])),
            ("(more)('n)", |s| has(s, &["more'n"])),
        ];
        let mut contractions: Vec<Rule> = c2
            .iter()
            .map(|(p, f)| rule(&format!("(?i){b}{p}{b}"), " $1 $2 ", *f))
            .collect();
        contractions.push(rule(
            &format!("(?i){b}(wan)(na)(?={PY_S})"),
            " $1 $2 ",
            |s| has(s, &["wanna"]),
        ));
        contractions.push(rule(&format!("(?i) ('t)(is){b}"), " $1 $2 ", |s| {
            has(s, &["'tis"])
        }));
        contractions.push(rule(&format!("(?i) ('t)(was){b}"), " $1 $2 ", |s| {
            has(s, &["'twas"])
        }));
        Treebank {
            rules: vec![
                // STARTING_QUOTES
                rule("([«“‘„]|[`]+)", " $1 ", |s| {
                    any_of(s, &['«', '“', '‘', '„', '`'])
                }),
                rule("^\"", "``", |s| s.starts_with('"')),
                rule("(``)", " $1 ", |s| s.contains("``")),
                rule("([ (\\[{<])(\"|'{2})", "$1 `` ", |s| {
                    s.contains('"') || s.contains("''")
                }),
                rule(
                    r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)",
                    "$1 ",
                    |s| s.contains('\''),
                ),
                // PUNCTUATION
                rule(
                    r#"([^\.])(\.)([\]\)}>"'»”’ ]*)\s*\z"#,
                    "$1 $2 $3 ",
                    |s| s.contains('.'),
                ),
                rule(r"([:,])([^\d])", " $1 $2", |s| any_of(s, &[':', ','])),
                rule(r"([:,])(?=\n?\z)", " $1 ", |s| any_of(s, &[':', ','])),
                rule(r"\.{2,}", " $0 ", |s| s.contains("..")),
                rule(r"[;@#$%&]", " $0 ", |s| {
                    any_of(s, &[';', '@', '#', '$', '%', '&'])
                }),
                rule(r"[\x{2012}-\x{2015}]", " $0 ", |s| {
                    any_of(s, &['\u{2012}', '\u{2013}', '\u{2014}', '\u{2015}'])
                }),
                rule(r#"([^\.])(\.)([\]\)}>"']*)\s*\z"#, "$1 $2$3 ", |s| {
                    s.contains('.')
                }),
                rule(r"[?!]", " $0 ", |s| any_of(s, &['?', '!'])),
                rule(r"([^'])' ", "$1 ' ", |s| s.contains("' ")),
                rule(r"[*]", " $0 ", |s| s.contains('*')),
                // PARENS_BRACKETS, DOUBLE_DASHES
                rule(r"[\]\[\(\)\{\}\<\>]", " $0 ", |s| {
                    any_of(s, &['[', ']', '(', ')', '{', '}', '<', '>'])
                }),
                rule("--", " -- ", |s| s.contains("--")),
            ],
            ending: vec![
                rule("([»”’])", " $1 ", |s| any_of(s, &['»', '”', '’'])),
                rule("''", " '' ", |s| s.contains("''")),
                rule("\"", " '' ", |s| s.contains('"')),
                rule("([^' ])('[sS]|'[mM]|'[dD]|') ", "$1 $2 ", |s| {
                    s.contains('\'')
                }),
                rule("([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", "$1 $2 ", |s| {
                    s.contains('\'')
                }),
            ],
            contractions,
        }
    }
}

fn apply(rules: &[Rule], mut text: String) -> String {
    for r in rules {
        if !(r.may_match)(&text) {
            continue;
        }
        if let std::borrow::Cow::Owned(s) = r.re.replace_all(&text, r.rep) {
            text = s;
        }
    }
    text
}

/// NLTK's `NLTKWordTokenizer().tokenize(text)` (the per-sentence part of `word_tokenize`).
pub fn treebank_tokenize(text: &str) -> Vec<String> {
    TREEBANK.with(|t| treebank_with(t, text))
}

fn treebank_with(t: &Treebank, text: &str) -> Vec<String> {
    let text = apply(&t.rules, text.to_string());
    let text = apply(&t.ending[..3], format!(" {text} "));
    // ENDING_QUOTES' `\s+` -> " " (regex-module `\s` = Unicode White_Space)
    let mut collapsed = String::with_capacity(text.len());
    let mut in_ws = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_ws {
                collapsed.push(' ');
            }
            in_ws = true;
        } else {
            collapsed.push(c);
            in_ws = false;
        }
    }
    let text = apply(&t.ending[3..], collapsed);
    let text = apply(&t.contractions, text);
    py_split(&text).map(str::to_string).collect()
}

/// NLTK's `word_tokenize(text)` (English Punkt sentences, then the NLTK word tokenizer).
pub fn word_tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for s in super::punkt::sentences(text) {
        out.extend(treebank_tokenize(s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tok13a() {
        assert_eq!(
            tokenize_13a("Hello, world! 3.5 1,000 a-b 2-3."),
            ["Hello", ",", "world", "!", "3.5", "1,000", "a-b", "2", "-", "3", "."]
        );
        assert_eq!(tokenize_13a("&amp;lt; x"), ["<", "x"]);
        assert!(tokenize_13a("  ").is_empty());
    }

    #[test]
    fn treebank_examples() {
        let t =
            word_tokenize("They'll save and invest more. \"Good muffins\" cost $3.88 in New York.");
        assert_eq!(
            t,
            [
                "They", "'ll", "save", "and", "invest", "more", ".", "``", "Good", "muffins", "''",
                "cost", "$", "3.88", "in", "New", "York", "."
            ]
        );
        assert_eq!(
            treebank_tokenize("I cannot, won't gonna"),
            ["I", "can", "not", ",", "wo", "n't", "gon", "na"]
        );
    }
}
