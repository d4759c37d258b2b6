//! pycocoevalcap's PTBTokenizer step, natively: the Stanford CoreNLP 3.4.1 `PTBTokenizer`
//! (`-preserveLines -lowerCase`, default PTB3 escaping) followed by removal of pycocoevalcap's
//! punctuation tokens, joined with single spaces.
//!
//! This is a hand-written lexer for the token classes that occur in captions, checked token for
//! token against the jar on the fixture corpus (`tests/metrics_parity.rs`): words (Unicode
//! letters, digits, internal hyphens, periods, `!`/`?`, slashes and `&`), clitics (`'s 'm 'd 'll
//! 're 've n't`) and the split words (`cannot gonna wanna gotta lemme gimme 'tis 'twas`),
//! numbers (signs, `.,:` groups, fractions, `½`→`1/2`), abbreviations that keep their period
//! (titles, months, states, companies, acronyms, single letters), quotes (`"` `'` `` ` ``
//! curly), brackets (`-lrb-` …), dashes (`–`/`—`→`--`), ellipses (`…`→`...`), and other
//! symbols. Characters outside the Basic Multilingual Plane (emoji) are deleted, as the jar
//! does. Not reproduced (they do not occur in captions we know of): SGML/XML tags, character
//! entities other than `&amp; &lt; &gt; &quot;`, URLs, e-mail addresses, phone numbers,
//! CP1252 control characters (U+0080–U+009F) and the jar's rare special-case word lists.
//! Line separators inside a caption (`\r`, U+000B, U+000C, U+0085, U+2028, U+2029) make the
//! jar emit extra lines, which misaligns pycocoevalcap's output; here they are plain spaces.

/// pycocoevalcap's `PUNCTUATIONS` (compared after lower-casing, so `-LRB-` etc. never match).
const PUNCTUATIONS: [&str; 17] = [
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// pycocoevalcap tokenization of one caption: PTB tokens (lower-cased) minus punctuation,
/// joined by single spaces.
pub fn coco_tokenize(caption: &str) -> String {
    let toks = ptb_tokens(caption);
    let mut out = String::with_capacity(caption.len() + 8);
    for t in toks.iter().flat_map(|t| t.split(' ')) {
        if t.is_empty() || PUNCTUATIONS.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    }
    out
}

fn is_space(c: char) -> bool {
    matches!(
        c,
        ' ' | '\t' | '\n' | '\r' | '\u{a0}' | '\u{2000}'
            ..='\u{200a}' | '\u{3000}' | '\u{b}' | '\u{c}' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

fn is_letter(c: char) -> bool {
    c.is_alphabetic() || ('\u{300}'..='\u{36f}').contains(&c) || c == '\u{ad}'
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (c.is_numeric() && !c.is_ascii() && c.to_digit(10).is_none() && is_nd(c))
}

/// Unicode decimal digits (Nd) outside ASCII that occur in practice.
fn is_nd(c: char) -> bool {
    matches!(c, '\u{660}'..='\u{669}' | '\u{6f0}'..='\u{6f9}' | '\u{966}'..='\u{96f}' | '\u{ff10}'..='\u{ff19}')
}

fn is_alnum(c: char) -> bool {
    is_letter(c) || is_digit(c)
}

fn is_apos(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}')
}

/// Words (lower-case, without the final period) that keep their period, checked against the
/// jar followed by a lower-case word, an upper-case word and the end of the line.
const ABBREVS: &[&str] = &[
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon",
    "tue", "tues", "wed", "thu", "thurs", "fri", "calif", "conn", "fla", "mich", "va", "ariz",
    "tenn", "mo", "ga", "ala", "wis", "md", "ind", "ky", "okla", "colo", "wyo", "vt", "kan", "nev",
    "neb", "minn", "inc", "co", "cos", "corp", "pty", "ptys", "ppty", "ltd", "plc", "bancorp",
    "dept", "bhd", "assn", "univ", "intl", "sys", "jr", "sr", "bros", "blvd", "rd", "esq", "ph",
    "tel", "est", "ext", "sq", "ft", "etc", "al", "seq", "vs", "alex", "wm", "jos", "cie", "cf",
    "treas", "invt", "elec", "natl", "mfg", "mtg", "bldg", "mr", "mrs", "ms", "dr", "drs", "prof",
    "profs", "sen", "sens", "rep", "reps", "atty", "attys", "lt", "col", "gen", "messrs", "gov",
    "govs", "adm", "rev", "maj", "sgt", "cpl", "pvt", "mt", "capt", "st", "ste", "ave", "pres",
    "lieut", "hon", "brig", "cmdr", "comdr", "pfc", "spc", "supt", "supts", "det", "m", "mme",
    "mlle",
];

fn special_split(lower: &str) -> Option<usize> {
    // number of chars of the first part of words the jar splits in two
    Some(match lower {
        "cannot" => 3,
        "gonna" | "wanna" => 3,
        "gotta" => 3,
        "lemme" | "gimme" => 3,
        "'tis" | "\u{2019}tis" => 2,
        "'twas" | "\u{2019}twas" => 2,
        _ => return None,
    })
}

struct Lexer {
    c: Vec<char>,
    i: usize,
    out: Vec<String>,
}

impl Lexer {
    fn at(&self, k: usize) -> Option<char> {
        self.c.get(k).copied()
    }

    fn emit(&mut self, s: String) {
        self.out.push(s.to_lowercase());
    }

    fn text(&self, a: usize, b: usize) -> String {
        self.c[a..b].iter().collect()
    }

    /// Length of a word starting at `i` (letters/digits with internal `-`, `.`, `!`, `?`, `/`,
    /// `&` followed by an alphanumeric; digit runs may continue into letters).
    fn word_end(&self, i: usize) -> usize {
        let mut j = i;
        while j < self.c.len() {
            let ch = self.c[j];
            if is_alnum(ch) {
                j += 1;
                continue;
            }
            if matches!(ch, '-' | '.' | '!' | '?' | '/' | '&') && j > i {
                if let Some(n) = self.at(j + 1) {
                    if is_alnum(n) {
                        j += 2;
                        continue;
                    }
                }
            }
            break;
        }
        j
    }

    fn number_end(&self, i: usize) -> Option<usize> {
        // [-+]? digits ([.,:] digits)*
        let mut j = i;
        if matches!(self.at(j), Some('-' | '+')) {
            j += 1;
        }
        let start = j;
        while self.at(j).is_some_and(is_digit) {
            j += 1;
        }
        if j == start {
            // .5
            if self.at(j) == Some('.') && self.at(j + 1).is_some_and(is_digit) {
            } else {
                return None;
            }
        }
        loop {
            if matches!(self.at(j), Some('.' | ',' | ':' | '-' | '/'))
                && self.at(j + 1).is_some_and(is_digit)
            {
                j += 1;
                while self.at(j).is_some_and(is_digit) {
                    j += 1;
                }
            } else {
                break;
            }
        }
        Some(j)
    }

    fn run(&mut self) {
        while self.i < self.c.len() {
            let ch = self.c[self.i];
            if is_space(ch) || (ch as u32) > 0xFFFF || ch.is_control() {
                self.i += 1;
                continue;
            }
            self.token();
        }
    }

    fn token(&mut self) {
        let i = self.i;
        let ch = self.c[i];
        // quotes and brackets
        match ch {
            '"' | '\u{201c}' | '\u{201d}' | '\u{201e}' | '\u{ab}' | '\u{bb}' => {
                self.emit("''".into());
                self.i += 1;
                return;
            }
            '`' => {
                let mut j = i;
                while self.at(j) == Some('`') {
                    j += 1;
                }
                self.emit(self.text(i, j.min(i + 2)));
                self.i = j.min(i + 2);
                return;
            }
            '(' => return self.fixed("-LRB-", 1),
            ')' => return self.fixed("-RRB-", 1),
            '[' => return self.fixed("-LSB-", 1),
            ']' => return self.fixed("-RSB-", 1),
            '{' => return self.fixed("-LCB-", 1),
            '}' => return self.fixed("-RCB-", 1),
            '\u{2013}' | '\u{2014}' | '\u{2015}' => return self.fixed("--", 1),
            '\u{2026}' => return self.fixed("...", 1),
            '\u{bd}' => return self.fixed("1/2", 1),
            '\u{bc}' => return self.fixed("1/4", 1),
            '\u{be}' => return self.fixed("3/4", 1),
            _ => {}
        }
        if ch == '&' {
            for (ent, rep) in [
                ("&amp;", "&"),
                ("&lt;", "<"),
                ("&gt;", ">"),
                ("&quot;", "''"),
            ] {
                if self.starts_with_ci(i, ent) {
                    return self.fixed(rep, ent.chars().count());
                }
            }
        }
        if is_apos(ch) || ch == '\u{2018}' {
            return self.apostrophe();
        }
        if ch == '.' {
            let mut j = i;
            while self.at(j) == Some('.') {
                j += 1;
            }
            if j - i >= 3 {
                let n = (j - i).min(5);
                self.emit("...".into());
                self.i = i + n;
                return;
            }
            if let Some(e) = self.number_end(i) {
                let t = self.text(i, e);
                self.emit(t);
                self.i = e;
                return;
            }
            return self.fixed(".", 1);
        }
        if is_digit(ch) || matches!(ch, '(' | '+') {
            if let Some(e) = self.phone(i) {
                return self.emit_span(i, e, true);
            }
        }
        let signed = matches!(ch, '-' | '+') && self.at(i + 1).is_some_and(is_digit);
        if signed || is_digit(ch) {
            if let Some(e) = self.number_end(i) {
                if self.c[i..e].iter().any(|c| !is_digit(*c)) {
                    return self.emit_span(i, e, false);
                }
                if let Some(f) = self.mixed_fraction(i, e) {
                    return self.emit_span(i, f, true);
                }
            }
        }
        if ch == '-' {
            let n = if self.at(i + 1) == Some('-') { 2 } else { 1 };
            let t = self.text(i, i + n);
            self.emit(t);
            self.i = i + n;
            return;
        }
        if is_alnum(ch) {
            return self.word();
        }
        if matches!(ch, '!' | '?') {
            let mut j = i;
            while matches!(self.at(j), Some('!' | '?')) {
                j += 1;
            }
            return self.emit_span(i, j, false);
        }
        if ch == '$' {
            return self.fixed("$", 1);
        }
        // any other symbol: a one-character token
        self.emit(ch.to_string());
        self.i += 1;
    }

    /// The jar's PHONE pattern (e.g. "100 100 100", "(02) 123 4567"); spaces become U+00A0.
    fn phone(&self, i: usize) -> Option<usize> {
        static RE: std::sync::OnceLock<fancy_regex::Regex> = std::sync::OnceLock::new();
        let re = RE.get_or_init(|| {
            fancy_regex::Regex::new(concat!(
                r"^(?:(?:\([0-9]{2,3}\)[ \x{a0}]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \x{a0}])?[0-9]{2,4}[\- \x{a0}])",
                r"[0-9]{3,4}[\- \x{a0}]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5})"
            ))
            .unwrap_or_else(|e| panic!("bad built-in pattern: {e}"))
        });
        let rest: String = self.c[i..self.c.len().min(i + 40)].iter().collect();
        let m = re.find(&rest).ok()??;
        let n = rest[..m.end()].chars().count();
        // longest match: a longer number/word wins
        let e = i + n;
        if self.at(e).is_some_and(is_alnum) {
            return None;
        }
        Some(e)
    }

    fn starts_with_ci(&self, i: usize, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(k, c)| self.at(i + k).is_some_and(|x| x.to_ascii_lowercase() == c))
    }

    fn fixed(&mut self, s: &str, n: usize) {
        self.emit(s.to_string());
        self.i += n;
    }

    fn emit_span(&mut self, a: usize, b: usize, nbsp: bool) {
        let mut t = self.text(a, b);
        if nbsp {
            t = t.replace(' ', "\u{a0}");
        }
        self.emit(t);
        self.i = b;
    }

    fn mixed_fraction(&self, i: usize, e: usize) -> Option<usize> {
        let n = e - i;
        if !(1..=4).contains(&n)
            || !self.c[i..e].iter().all(|c| c.is_ascii_digit())
            || self.at(e) != Some(' ')
        {
            return None;
        }
        let mut j = e + 1;
        let a = j;
        while self.at(j).is_some_and(|c| c.is_ascii_digit()) {
            j += 1;
        }
        if !(1..=4).contains(&(j - a)) || self.at(j) != Some('/') {
            return None;
        }
        let b = j + 1;
        let mut k = b;
        while self.at(k).is_some_and(|c| c.is_ascii_digit()) {
            k += 1;
        }
        if !(1..=4).contains(&(k - b)) {
            return None;
        }
        Some(k)
    }

    fn apostrophe(&mut self) {
        let i = self.i;
        let ch = self.c[i];
        // 'tis 'twas
        let w = self.word_end(i + 1);
        let lower: String = self.text(i, w).to_lowercase();
        if let Some(k) = special_split(&lower) {
            self.emit(self.text(i, i + k));
            self.emit(self.text(i + k, w));
            self.i = w;
            return;
        }
        // '90s
        if ch != '\u{2018}'
            && self.at(i + 1).is_some_and(|c| c.is_ascii_digit())
            && self.at(i + 2).is_some_and(|c| c.is_ascii_digit())
        {
            let mut e = i + 3;
            if matches!(self.at(e), Some('s' | 'S')) {
                e += 1;
            }
            if !self.at(e).is_some_and(is_alnum) {
                return self.emit_span(i, e, false);
            }
        }
        // clitics after a space: 's 'm 'd 'll 're 've
        if is_apos(ch) {
            for cl in ["s", "m", "d", "ll", "re", "ve"] {
                if self.clitic_at(i, cl) {
                    let n = 1 + cl.len();
                    return self.emit_span(i, i + n, false);
                }
            }
        }
        // 'n'
        if is_apos(ch)
            && matches!(self.at(i + 1), Some('n' | 'N'))
            && self.at(i + 2).is_some_and(is_apos)
        {
            return self.emit_span(i, i + 3, false);
        }
        if self.at(i + 1) == Some(ch) && ch == '\'' {
            return self.fixed("''", 2);
        }
        self.emit("'".into());
        self.i += 1;
    }

    /// `'cl` followed by a non-letter.
    fn clitic_at(&self, i: usize, cl: &str) -> bool {
        let n = cl.chars().count();
        cl.chars().enumerate().all(|(k, c)| {
            self.at(i + 1 + k)
                .is_some_and(|x| x.to_ascii_lowercase() == c)
        }) && !self.at(i + 1 + n).is_some_and(is_alnum)
    }

    fn word(&mut self) {
        let i = self.i;
        let mut e = self.word_end(i);
        // o'clock, ma'am: letter(s) + apostrophe + letters joined
        if let Some(j) = self.apostrophe_word(i, e) {
            e = j;
        }
        let text = self.text(i, e);
        let lower = text.to_lowercase();
        if let Some(k) = special_split(&lower) {
            self.emit(self.text(i, i + k));
            self.emit(self.text(i + k, e));
            self.i = e;
            return;
        }
        // clitics: n't, 's ...
        if let Some(a) = self.at(e).filter(|&c| is_apos(c)) {
            let _ = a;
            // n't
            if lower.ends_with('n')
                && e - i >= 2
                && matches!(self.at(e + 1), Some('t' | 'T'))
                && !self.at(e + 2).is_some_and(is_alnum)
            {
                self.emit(self.text(i, e - 1));
                self.emit(self.text(e - 1, e + 2));
                self.i = e + 2;
                return;
            }
            for cl in ["s", "m", "d", "ll", "re", "ve"] {
                if self.clitic_at(e, cl) {
                    self.emit(text);
                    let n = 1 + cl.len();
                    self.emit(self.text(e, e + n));
                    self.i = e + n;
                    return;
                }
            }
        }
        // abbreviations keep their period
        if self.at(e) == Some('.') {
            let is_acronym = text.contains('.')
                && text
                    .split('.')
                    .all(|p| p.chars().count() == 1 && p.chars().all(is_letter));
            let single = text.chars().count() == 1 && text.chars().all(|c| c.is_ascii_alphabetic());
            if is_acronym
                || single
                || ABBREVS.contains(&lower.as_str())
                || lower == "ph.d"
                || lower == "ed.d"
            {
                self.emit(self.text(i, e + 1));
                self.i = e + 1;
                return;
            }
        }
        self.emit(text);
        self.i = e;
    }

    fn apostrophe_word(&self, i: usize, e: usize) -> Option<usize> {
        let a = self.at(e)?;
        if !is_apos(a) {
            return None;
        }
        let w = self.word_end(e + 1);
        if w == e + 1 {
            return None;
        }
        let first: String = self.text(i, e).to_lowercase();
        let rest: String = self.text(e + 1, w).to_lowercase();
        // [A-HJ-XZn]'[:letter:]{2}... (o'clock) and vowel'vowel (ma'am)
        let single = first.chars().count() == 1
            && first
                .chars()
                .all(|c| c.is_ascii_alphabetic() && c != 'i' && c != 'y');
        let vowel = |c: Option<char>| c.is_some_and(|c| "aeiouy".contains(c));
        if (single && rest.chars().count() >= 2 && rest.chars().all(is_letter))
            || (vowel(first.chars().last())
                && vowel(rest.chars().next())
                && rest.chars().all(is_letter)
                && first.chars().all(is_letter))
        {
            return Some(w);
        }
        None
    }
}

/// The jar's tokens of one line (lower-cased, before punctuation removal).
pub fn ptb_tokens(line: &str) -> Vec<String> {
    let mut lx = Lexer {
        c: line.chars().collect(),
        i: 0,
        out: Vec::new(),
    };
    lx.run();
    lx.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jar_examples() {
        for (inp, want) in [
            (
                "A man's dog (brown) is \"running\" fast.",
                "a man 's dog -lrb- brown -rrb- is running fast",
            ),
            (
                "Two colour grey cats, 3.5 kg & 1,000 dogs!",
                "two colour grey cats 3.5 kg & 1,000 dogs",
            ),
            (
                "it's 5 o'clock... don't you-know -- mr. smith U.S. e.g. etc.",
                "it 's 5 o'clock do n't you-know mr. smith u.s. e.g. etc.",
            ),
            (
                "cannot gonna wanna I'm we'll",
                "can not gon na wan na i 'm we 'll",
            ),
            ("😀 dog😀cat", "dog cat"),
        ] {
            assert_eq!(coco_tokenize(inp), want, "{inp}");
        }
    }
}
