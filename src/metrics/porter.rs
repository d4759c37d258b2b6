//! NLTK's `PorterStemmer()` (mode `NLTK_EXTENSIONS`), used by NLTK METEOR and `rouge_score`.
//!
//! A line-by-line port of `nltk/stem/porter.py` (NLTK 3.10) working on Unicode scalar values
//! like Python's `str`; only `a e i o u` are vowels and `y` is context dependent.

fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

fn is_consonant(w: &[char], mut i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i] == 'y' {
        let mut negate = false;
        while i > 0 && w[i] == 'y' {
            negate = !negate;
            i -= 1;
        }
        return is_vowel(w[i]) == negate;
    }
    true
}

fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        if is_vowel(c) {
            flags.push(false);
        } else if c == 'y' {
            flags.push(if i == 0 { true } else { !flags[i - 1] });
        } else {
            flags.push(true);
        }
    }
    flags
}

fn measure(stem: &[char]) -> usize {
    let f = consonant_flags(stem);
    f.windows(2).filter(|w| !w[0] && w[1]).count()
}

fn has_positive_measure(stem: &[char]) -> bool {
    measure(stem) > 0
}

fn contains_vowel(stem: &[char]) -> bool {
    !consonant_flags(stem).into_iter().all(|c| c)
}

fn ends_double_consonant(w: &[char]) -> bool {
    w.len() >= 2 && w[w.len() - 1] == w[w.len() - 2] && is_consonant(w, w.len() - 1)
}

fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

fn ends_with(w: &[char], suffix: &str) -> bool {
    // suffixes are ASCII
    let n = suffix.len();
    w.len() >= n
        && w[w.len() - n..]
            .iter()
            .zip(suffix.bytes())
            .all(|(&c, b)| c == b as char)
}

fn strip(w: &[char], suffix: &str) -> Vec<char> {
    w[..w.len() - suffix.len()].to_vec()
}

fn join(stem: Vec<char>, rep: &str) -> Vec<char> {
    let mut s = stem;
    s.extend(rep.chars());
    s
}

type Cond<'a> = Option<&'a dyn Fn(&[char]) -> bool>;

/// `_apply_rule_list`: the first rule whose suffix matches decides (its condition may fail).
fn apply_rules(word: &[char], rules: &[(&str, String, Cond)]) -> Vec<char> {
    for (suffix, rep, cond) in rules {
        if *suffix == "*d" && ends_double_consonant(word) {
            let stem = word[..word.len() - 2].to_vec();
            return if cond.is_none_or(|c| c(&stem)) {
                join(stem, rep)
            } else {
                word.to_vec()
            };
        }
        if ends_with(word, suffix) {
            let stem = strip(word, suffix);
            return if cond.is_none_or(|c| c(&stem)) {
                join(stem, rep)
            } else {
                word.to_vec()
            };
        }
    }
    word.to_vec()
}

fn r<'a>(s: &'a str, rep: &str, c: Cond<'a>) -> (&'a str, String, Cond<'a>) {
    (s, rep.to_string(), c)
}

fn step1a(w: &[char]) -> Vec<char> {
    if ends_with(w, "ies") && w.len() == 4 {
        return join(strip(w, "ies"), "ie");
    }
    apply_rules(
        w,
        &[
            r("sses", "ss", None),
            r("ies", "i", None),
            r("ss", "ss", None),
            r("s", "", None),
        ],
    )
}

fn step1b(w: &[char]) -> Vec<char> {
    if ends_with(w, "ied") {
        return if w.len() == 4 {
            join(strip(w, "ied"), "ie")
        } else {
            join(strip(w, "ied"), "i")
        };
    }
    if ends_with(w, "eed") {
        let stem = strip(w, "eed");
        return if measure(&stem) > 0 {
            join(stem, "ee")
        } else {
            w.to_vec()
        };
    }
    let mut inter: Option<Vec<char>> = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) {
            let s = strip(w, suffix);
            if contains_vowel(&s) {
                inter = Some(s);
                break;
            }
        }
    }
    let Some(stem) = inter else { return w.to_vec() };
    let last = stem.last().copied();
    let dbl = move |_: &[char]| !matches!(last, Some('l' | 's' | 'z'));
    let cvc = |s: &[char]| measure(s) == 1 && ends_cvc(s);
    let last_s: String = last.map(String::from).unwrap_or_default();
    apply_rules(
        &stem,
        &[
            r("at", "ate", None),
            r("bl", "ble", None),
            r("iz", "ize", None),
            ("*d", last_s, Some(&dbl)),
            r("", "e", Some(&cvc)),
        ],
    )
}

fn step1c(w: &[char]) -> Vec<char> {
    let cond = |s: &[char]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply_rules(w, &[r("y", "i", Some(&cond))])
}

fn step2(w: &[char]) -> Vec<char> {
    if ends_with(w, "alli") && has_positive_measure(&strip(w, "alli")) {
        return step2(&join(strip(w, "alli"), "al"));
    }
    let pm: &dyn Fn(&[char]) -> bool = &has_positive_measure;
    let word = w.to_vec();
    let logi = move |_: &[char]| word.len() >= 3 && has_positive_measure(&word[..word.len() - 3]);
    apply_rules(
        w,
        &[
            r("ational", "ate", Some(pm)),
            r("tional", "tion", Some(pm)),
            r("enci", "ence", Some(pm)),
            r("anci", "ance", Some(pm)),
            r("izer", "ize", Some(pm)),
            r("bli", "ble", Some(pm)),
            r("alli", "al", Some(pm)),
            r("entli", "ent", Some(pm)),
            r("eli", "e", Some(pm)),
            r("ousli", "ous", Some(pm)),
            r("ization", "ize", Some(pm)),
            r("ation", "ate", Some(pm)),
            r("ator", "ate", Some(pm)),
            r("alism", "al", Some(pm)),
            r("iveness", "ive", Some(pm)),
            r("fulness", "ful", Some(pm)),
            r("ousness", "ous", Some(pm)),
            r("aliti", "al", Some(pm)),
            r("iviti", "ive", Some(pm)),
            r("biliti", "ble", Some(pm)),
            r("fulli", "ful", Some(pm)),
            r("logi", "log", Some(&logi)),
        ],
    )
}

fn step3(w: &[char]) -> Vec<char> {
    let pm: &dyn Fn(&[char]) -> bool = &has_positive_measure;
    apply_rules(
        w,
        &[
            r("icate", "ic", Some(pm)),
            r("ative", "", Some(pm)),
            r("alize", "al", Some(pm)),
            r("iciti", "ic", Some(pm)),
            r("ical", "ic", Some(pm)),
            r("ful", "", Some(pm)),
            r("ness", "", Some(pm)),
        ],
    )
}

fn step4(w: &[char]) -> Vec<char> {
    let gt1: &dyn Fn(&[char]) -> bool = &|s: &[char]| measure(s) > 1;
    let ion = |s: &[char]| measure(s) > 1 && matches!(s.last(), Some('s' | 't'));
    apply_rules(
        w,
        &[
            r("al", "", Some(gt1)),
            r("ance", "", Some(gt1)),
            r("ence", "", Some(gt1)),
            r("er", "", Some(gt1)),
            r("ic", "", Some(gt1)),
            r("able", "", Some(gt1)),
            r("ible", "", Some(gt1)),
            r("ant", "", Some(gt1)),
            r("ement", "", Some(gt1)),
            r("ment", "", Some(gt1)),
            r("ent", "", Some(gt1)),
            r("ion", "", Some(&ion)),
            r("ou", "", Some(gt1)),
            r("ism", "", Some(gt1)),
            r("ate", "", Some(gt1)),
            r("iti", "", Some(gt1)),
            r("ous", "", Some(gt1)),
            r("ive", "", Some(gt1)),
            r("ize", "", Some(gt1)),
        ],
    )
}

fn step5a(w: &[char]) -> Vec<char> {
    if ends_with(w, "e") {
        let stem = strip(w, "e");
        if measure(&stem) > 1 {
            return stem;
        }
        if measure(&stem) == 1 && !ends_cvc(&stem) {
            return stem;
        }
    }
    w.to_vec()
}

fn step5b(w: &[char]) -> Vec<char> {
    let word = w.to_vec();
    let cond = move |_: &[char]| measure(&word[..word.len() - 1]) > 1;
    apply_rules(w, &[r("ll", "l", Some(&cond))])
}

/// NLTK irregular forms (`pool`) of `NLTK_EXTENSIONS` mode.
fn irregular(w: &str) -> Option<&'static str> {
    Some(match w {
        "sky" | "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "news" => "news",
        "innings" | "inning" => "inning",
        "outings" | "outing" => "outing",
        "cannings" | "canning" => "canning",
        "howe" => "howe",
        "proceed" => "proceed",
        "exceed" => "exceed",
        "succeed" => "succeed",
        _ => return None,
    })
}

/// `PorterStemmer().stem(word)` (lowercases first, like NLTK's default `to_lowercase=True`).
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some(s) = irregular(&lower) {
        return s.to_string();
    }
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut s: Vec<char> = lower.chars().collect();
    s = step1a(&s);
    s = step1b(&s);
    s = step1c(&s);
    s = step2(&s);
    s = step3(&s);
    s = step4(&s);
    s = step5a(&s);
    s = step5b(&s);
    s.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn nltk_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("running", "run"),
            ("hopping", "hop"),
            ("relational", "relat"),
            ("generously", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("happy", "happi"),
            ("sky", "sky"),
            ("agreed", "agre"),
            ("feed", "feed"),
            ("analogi", "analog"),
            ("controll", "control"),
            ("is", "is"),
        ] {
            assert_eq!(stem(w), s, "{w}");
        }
    }
}
