//! Answers out of free model text (spec §10), normalised so that equal
//! answers written differently compare equal.
//!
//! One concept (reading answers out of text); a little over 600 lines with its tests.

/// A number as written in text: its digits with `$`, commas and a trailing `.0…` already gone,
/// and a bare leading `.` given its `0` (`.3` → `0.3`).
fn clean_number(s: &str) -> String {
    let s: String = s.chars().filter(|c| !matches!(c, ',' | '$')).collect();
    match s.split_once('.') {
        Some((int, frac)) if frac.chars().all(|c| c == '0') => int.to_string(),
        Some((int @ ("" | "-"), frac)) => format!("{int}0.{frac}"),
        _ => s,
    }
}

/// The minus signs of typeset text (U+2212, as in `−1`) as ASCII hyphen-minus.
fn ascii_minus(text: &str) -> String {
    text.replace('\u{2212}', "-")
}

/// The numbers in `text`, in order: `-` (or `−`), `$`, thousands commas and decimals (`.5` too) allowed.
pub fn numbers(text: &str) -> Vec<String> {
    let text = ascii_minus(text);
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match number_at(b, i) {
            Some(end) => {
                out.push(clean_number(&text[i..end]));
                i = end;
            }
            None => i += 1,
        }
    }
    out
}

/// The end of the number starting exactly at `i`, if one does.
fn number_at(b: &[u8], i: usize) -> Option<usize> {
    let digit = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
    // A number glued to a word or to a previous digit is part of something else (x2, 3rd).
    if i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.') {
        return None;
    }
    let mut j = i;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    if b.get(j) == Some(&b'$') {
        j += 1;
    }
    if b.get(j) == Some(&b'.') && digit(j + 1) {
        j += 1;
        while digit(j) {
            j += 1;
        }
        return Some(j);
    }
    if !digit(j) {
        return None;
    }
    while digit(j) || (b.get(j) == Some(&b',') && digit(j + 1)) {
        j += 1;
    }
    if b.get(j) == Some(&b'.') && digit(j + 1) {
        j += 1;
        while digit(j) {
            j += 1;
        }
    }
    Some(j)
}

/// GSM8K: the number after the first `####`, else the last number in the text.
pub fn gsm8k_answer(text: &str) -> Option<String> {
    if let Some((_, after)) = text.split_once("####") {
        if let Some(n) = numbers(after).into_iter().next() {
            return Some(n);
        }
    }
    numbers(text).pop()
}

/// Whether two extracted numbers are equal as numbers (`1,000` = `1000.00`).
pub fn numbers_equal(a: &str, b: &str) -> bool {
    match (parse_number(a), parse_number(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// The value of a plain decimal; Rust's parser alone would also take `inf` and `NaN`.
fn parse_number(s: &str) -> Option<f64> {
    let s = s.trim();
    let plain = s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().all(|b| b"0123456789.,-$".contains(&b));
    if plain {
        clean_number(s).parse().ok()
    } else {
        None
    }
}

/// A MATH answer's value when it is a plain decimal; a comma there may also separate a pair.
fn math_plain(s: &str) -> Option<f64> {
    parse_number(s).filter(|_| thousands_commas(s))
}

/// Whether every comma of a number separates a group of three digits (`10,000`, not the pair `1,2`).
fn thousands_commas(s: &str) -> bool {
    s.split(',').skip(1).all(|g| {
        g.len() >= 3
            && g.as_bytes()[..3].iter().all(u8::is_ascii_digit)
            && !g.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
    })
}

/// The content of the last `\boxed{...}` (or `\fbox{...}`, or `\boxed N`), nested braces kept.
pub fn last_boxed(text: &str) -> Option<String> {
    let start = ["\\boxed", "\\fbox"].iter().filter_map(|m| text.rfind(m).map(|p| p + m.len())).max()?;
    let rest = &text[start..];
    if let Some(body) = rest.strip_prefix('{') {
        return braced(body).map(str::to_string);
    }
    // `\boxed 5`: the argument runs to the end of the token: whitespace or a `$` that closes the
    // formula, not an escaped `\$` (`$\boxed \$18.90$`).
    let arg = rest.strip_prefix(' ')?;
    let b = arg.as_bytes();
    let end = (0..b.len())
        .find(|&i| b[i].is_ascii_whitespace() || (b[i] == b'$' && (i == 0 || b[i - 1] != b'\\')))
        .unwrap_or(b.len());
    Some(arg[..end].to_string())
}

/// The text up to the `}` that closes an already opened brace.
fn braced(body: &str) -> Option<&str> {
    let mut depth = 1;
    for (i, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&body[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// MATH: the last `\boxed{}` of the text, else its last number.
pub fn math_answer(text: &str) -> Option<String> {
    last_boxed(text).or_else(|| numbers(text).pop())
}

/// MATH answers compared after [`normalize_math`], or as numbers when both are numeric.
pub fn math_equal(answer: &str, reference: &str) -> bool {
    let (a, r) = (normalize_math(answer), normalize_math(reference));
    if a == r {
        return true;
    }
    match (math_number(&a), math_number(&r)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// Text that only dresses an answer up, dropped before comparing (Hendrycks et al.'s list and a few more).
const MATH_NOISE: &[&str] = &[
    "\n",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\left",
    "\\right",
    "^{\\circ}",
    "^\\circ",
    "\\circ",
    "\\$",
    "$",
    "\\%",
    "%",
    "\\displaystyle",
    "\\ ",
];

/// A MATH answer in a canonical spelling: fractions as `\frac{a}{b}`, no spaces, sizing or units.
pub fn normalize_math(s: &str) -> String {
    let mut s = ascii_minus(s.trim());
    if let Some(inner) = last_boxed(&s) {
        s = inner;
    }
    s = mark_row_breaks(&s).replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac");
    s = strip_text_units(&s);
    for noise in MATH_NOISE {
        s = s.replace(noise, "");
    }
    s = s.replace(' ', "");
    s = strip_lhs(&s);
    s = fix_sqrt(&s);
    s = fix_fracs(&s);
    s = s.trim_end_matches('.').to_string();
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    s = slash_to_frac(&s);
    if math_plain(&s).is_some() {
        s = clean_number(&s);
    }
    s.replace(ROW_BREAK, "\\\\")
}

/// Stands for a matrix row break `\\` while the rest is normalised (a character no answer contains).
const ROW_BREAK: char = '\u{1}';

/// `\\` followed by anything but a letter is a row break (`1 \\ 2` in a `pmatrix`), kept apart
/// from `\\frac`, a doubly escaped command that normalises to `\frac`.
fn mark_row_breaks(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("\\\\") {
        out.push_str(&rest[..p]);
        let after = &rest[p + 2..];
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            out.push_str("\\\\");
        } else {
            out.push(ROW_BREAK);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `\text{ cm}^2` after a value is a unit, cut with all that follows (as Hendrycks et al. do);
/// a `\text{(A)}` that is the whole answer keeps its content.
fn strip_text_units(s: &str) -> String {
    let mut s = s.to_string();
    for cmd in ["\\text{", "\\textbf{", "\\mbox{", "\\mathrm{"] {
        while let Some(p) = s.find(cmd) {
            let Some(body) = braced(&s[p + cmd.len()..]) else { break };
            if !s[..p].trim().is_empty() {
                s.truncate(p);
                break;
            }
            s = format!("{body}{}", &s[p + cmd.len() + body.len() + 1..]);
        }
    }
    s
}

/// `x=5` → `5`, when the left side is a short variable name.
fn strip_lhs(s: &str) -> String {
    match s.split_once('=') {
        Some((lhs, rhs)) if lhs.len() <= 2 && !rhs.contains('=') => rhs.to_string(),
        _ => s.to_string(),
    }
}

/// `\sqrt3` → `\sqrt{3}`.
fn fix_sqrt(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find("\\sqrt") {
        out.push_str(&rest[..p + 5]);
        rest = &rest[p + 5..];
        match rest.chars().next() {
            Some(c) if c.is_ascii_alphanumeric() => {
                out.push('{');
                out.push(c);
                out.push('}');
                rest = &rest[1..];
            }
            _ => {}
        }
    }
    out.push_str(rest);
    out
}

/// `\frac12` and `\frac1{2}` → `\frac{1}{2}`.
fn fix_fracs(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(p) = rest.find("\\frac") {
        out.push_str(&rest[..p + 5]);
        rest = &rest[p + 5..];
        for _ in 0..2 {
            match rest.chars().next() {
                Some('{') => match braced(&rest[1..]) {
                    Some(body) => {
                        out.push_str(&rest[..body.len() + 2]);
                        rest = &rest[body.len() + 2..];
                    }
                    None => break,
                },
                Some(c) if c.is_ascii_alphanumeric() => {
                    out.push('{');
                    out.push(c);
                    out.push('}');
                    rest = &rest[1..];
                }
                _ => break,
            }
        }
    }
    out.push_str(rest);
    out
}

/// `3/4` (integers) → `\frac{3}{4}`, `-3/4` → `-\frac{3}{4}`.
fn slash_to_frac(s: &str) -> String {
    let (sign, body) = s.strip_prefix('-').map_or(("", s), |b| ("-", b));
    match body.split_once('/') {
        Some((a, b)) if is_int(a) && is_int(b) => format!("{sign}\\frac{{{a}}}{{{b}}}"),
        _ => s.to_string(),
    }
}

fn is_int(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A normalised answer's value if it is a plain number or a fraction of numbers.
fn math_number(s: &str) -> Option<f64> {
    let (sign, body) = s.strip_prefix('-').map_or((1.0, s), |b| (-1.0, b));
    if let Some(args) = body.strip_prefix("\\frac{") {
        let num = braced(args)?;
        let den = braced(args[num.len() + 1..].strip_prefix('{')?)?;
        if args.len() != num.len() + den.len() + 3 {
            return None;
        }
        // Only a fraction in lowest terms has a value here: an unreduced `\frac{2}{4}` is not the answer `\frac12`.
        let (n, d) = (num.parse::<i64>().ok()?, den.parse::<i64>().ok()?);
        if d == 0 || gcd(n.unsigned_abs(), d.unsigned_abs()) != 1 {
            return None;
        }
        return Some(sign * n as f64 / d as f64);
    }
    math_plain(body).map(|x| sign * x)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The option letter a multiple-choice answer names, out of `options` (A–D for MMLU, up to A–J for MMLU-Pro).
///
/// Stated answers ("the answer is (C)", "Answer: D") win over a bare letter at the start ("C.", "**B**"),
/// which wins over the first parenthesised or bold letter, which wins over the first free-standing one.
pub fn choice_letter(text: &str, options: usize) -> Option<char> {
    let valid = |c: char| c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < options;
    stated_letter(text, &valid)
        .or_else(|| named_letter(text, &valid))
        .or_else(|| leading_letter(text, &valid))
        .or_else(|| marked_letter(text, &valid))
        .or_else(|| free_letter(text, &valid))
}

/// A letter standing alone at byte `i`: no letter or digit on either side.
fn alone(b: &[u8], i: usize) -> bool {
    let word = |j: Option<&u8>| j.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'\'');
    !word(i.checked_sub(1).and_then(|j| b.get(j))) && !word(b.get(i + 1))
}

/// "answer is (C)", "Answer: D", "answer is **B**".
fn stated_letter(text: &str, valid: &dyn Fn(char) -> bool) -> Option<char> {
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(p) = lower[from..].find("answer") {
        let after = from + p + "answer".len();
        let rest = text[after..].trim_start_matches(|c: char| c.is_whitespace() || ":*(".contains(c));
        let rest = rest.strip_prefix("is").unwrap_or(rest);
        let rest = rest.trim_start_matches(|c: char| c.is_whitespace() || ":*([".contains(c));
        let b = rest.as_bytes();
        if let Some(&c) = b.first() {
            if valid(c as char) && alone(b, 0) {
                return Some(c as char);
            }
        }
        from = after;
    }
    None
}

/// What follows a letter that names the answer: "A is the correct answer", "(C) is correct".
const NAMES_THE_ANSWER: &[&str] =
    &[" is the correct answer", " is the right answer", " is the best answer", " is the answer", " is correct"];

/// The letter before the first phrase of [`NAMES_THE_ANSWER`] ("I is the correct answer" with ten options).
fn named_letter(text: &str, valid: &dyn Fn(char) -> bool) -> Option<char> {
    let lower = text.to_ascii_lowercase();
    let at = NAMES_THE_ANSWER.iter().filter_map(|p| lower.find(p)).min()?;
    let before = text[..at].trim_end_matches(|c: char| c.is_whitespace() || ")*]".contains(c));
    let b = before.as_bytes();
    let i = b.len().checked_sub(1)?;
    let c = b[i] as char;
    (valid(c) && alone(b, i)).then_some(c)
}

/// The text opening with a letter: "C", "C.", "(C)", "**B**", "B) because".
fn leading_letter(text: &str, valid: &dyn Fn(char) -> bool) -> Option<char> {
    let rest = text.trim_start_matches(|c: char| c.is_whitespace() || "*([".contains(c));
    let b = rest.as_bytes();
    let c = *b.first()? as char;
    // "A good guess..." opens with an article, not an option: a plain space does not end the letter.
    let ends = b.get(1).is_none_or(|n| ".):*],\n".contains(*n as char));
    (valid(c) && ends).then_some(c)
}

/// The first "(C)" or "**C**".
fn marked_letter(text: &str, valid: &dyn Fn(char) -> bool) -> Option<char> {
    let b = text.as_bytes();
    (0..b.len()).find_map(|i| {
        let c = b[i] as char;
        let paren = i > 0 && b[i - 1] == b'(' && b.get(i + 1) == Some(&b')');
        let bold = b[..i].ends_with(b"**") && b[i + 1..].starts_with(b"**");
        (valid(c) && (paren || bold)).then_some(c)
    })
}

/// The first letter standing alone, skipping "A" and "I" used as words ("A car", "I think").
fn free_letter(text: &str, valid: &dyn Fn(char) -> bool) -> Option<char> {
    let b = text.as_bytes();
    (0..b.len()).find_map(|i| {
        let c = b[i] as char;
        let as_word =
            matches!(c, 'A' | 'I') && b.get(i + 1) == Some(&b' ') && b.get(i + 2).is_some_and(u8::is_ascii_lowercase);
        (valid(c) && alone(b, i) && !as_word).then_some(c)
    })
}

/// The program in a completion: the first fenced block (preferring one that defines something), else the text itself.
pub fn code_block(text: &str) -> String {
    let blocks = fenced_blocks(text);
    let pick = blocks.iter().find(|b| b.contains("def ") || b.contains("import ")).or(blocks.first());
    pick.map_or_else(|| text.to_string(), |b| b.to_string())
}

/// The contents of the ``` fenced blocks; an unclosed last fence runs to the end.
fn fenced_blocks(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(p) = rest.find("```") {
        let after = &rest[p + 3..];
        // The info string (`python`) runs to the end of the fence's line.
        let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                out.push(body[..end].trim_end_matches([' ', '\t']));
                rest = &body[end + 3..];
            }
            None => {
                out.push(body);
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_prefers_the_marked_answer() {
        assert_eq!(gsm8k_answer("She makes 9 * 2 = $18.\n#### 18").as_deref(), Some("18"));
        assert_eq!(gsm8k_answer("#### $1,234.00 in total, 7 days").as_deref(), Some("1234"));
        assert_eq!(gsm8k_answer("It costs 5 - 12 = -7 dollars.").as_deref(), Some("-7"));
        assert_eq!(gsm8k_answer("So 3 apples and 4.50 each").as_deref(), Some("4.50"));
        assert_eq!(gsm8k_answer("The answer is 42.").as_deref(), Some("42"));
        assert_eq!(gsm8k_answer("no numbers"), None);
        assert!(numbers_equal("4.50", "4.5"));
        assert!(numbers_equal("1,000", "1000.0"));
        assert!(!numbers_equal("-7", "7"));
        // Digits glued to a word are part of a name; a minus after a digit is a subtraction.
        assert_eq!(numbers("x2 and 10-3 and 5kg"), vec!["10", "3", "5"]);
        assert!(!numbers_equal("nan", "nan"));
    }

    #[test]
    fn boxed_keeps_nested_braces() {
        assert_eq!(
            last_boxed("so \\boxed{1} then \\boxed{\\frac{1}{\\sqrt{2}}}.").as_deref(),
            Some("\\frac{1}{\\sqrt{2}}")
        );
        assert_eq!(last_boxed("$\\boxed 5$").as_deref(), Some("5"));
        assert_eq!(last_boxed("\\fbox{x+1}").as_deref(), Some("x+1"));
        assert_eq!(last_boxed("\\boxed{unclosed"), None);
        assert_eq!(math_answer("no box, the value is 12.5").as_deref(), Some("12.5"));
    }

    #[test]
    fn math_normalisation_equates_spellings() {
        for (a, b) in [
            ("\\dfrac{1}{2}", "\\frac12"),
            ("\\tfrac{3}{4}", "3/4"),
            ("0.5", "\\frac{1}{2}"),
            ("-\\frac{2}{3}", "-2/3"),
            ("\\left( 1, 2 \\right)", "(1,2)"),
            ("5.0", "5"),
            ("10.00", "10"),
            ("90^\\circ", "90"),
            ("90^{\\circ}", "90"),
            ("\\$18.90", "18.9"),
            ("10\\%", "10"),
            ("3\\!\\cdot\\!4", "3\\cdot4"),
            ("12 \\text{ cm}", "12"),
            ("\\frac{1}{2}\\text{ cm}^2", "\\frac12"),
            ("10,000", "10000"),
            ("5\\mbox{ inches}", "5"),
            ("\\text{(B)}", "(B)"),
            ("x = 7", "7"),
            ("\\sqrt3", "\\sqrt{3}"),
            ("\\frac{\\sqrt{3}}{2}", "\\dfrac{\\sqrt3}{2}"),
            ("\\boxed{6}", "6"),
            (".5", "\\frac{1}{2}"),
        ] {
            assert!(math_equal(a, b), "{a:?} should equal {b:?}: {:?} vs {:?}", normalize_math(a), normalize_math(b));
        }
        for (a, b) in
            [("\\frac{1}{2}", "\\frac{1}{3}"), ("(1,2)", "(2,1)"), ("x^2", "x^3"), ("12", "1/2"), ("1,2", "12")]
        {
            assert!(!math_equal(a, b), "{a:?} should differ from {b:?}");
        }
    }

    #[test]
    fn letters_in_their_usual_dress() {
        let l = |t: &str| choice_letter(t, 4);
        assert_eq!(l("The answer is (C)."), Some('C'));
        assert_eq!(l("C."), Some('C'));
        assert_eq!(l("**B**"), Some('B'));
        assert_eq!(l("Answer: D"), Some('D'));
        assert_eq!(l("  (A) 42"), Some('A'));
        assert_eq!(l("I think the answer is B because..."), Some('B'));
        assert_eq!(l("A good guess is (C)"), Some('C'));
        assert_eq!(l("The correct option is D, since"), Some('D'));
        assert_eq!(l("The answer is **B**"), Some('B'));
        assert_eq!(l("none of these"), None);
        // Outside the option range: MMLU stops at D, MMLU-Pro goes to J.
        assert_eq!(l("The answer is (G)."), None);
        assert_eq!(choice_letter("The answer is (G).", 10), Some('G'));
        assert_eq!(choice_letter("I. is correct", 10), Some('I'));
    }

    #[test]
    fn a_letter_that_names_the_answer() {
        assert_eq!(choice_letter("A is the correct answer.", 4), Some('A'));
        assert_eq!(choice_letter("I is the correct answer.", 10), Some('I'));
        assert_eq!(choice_letter("(B) is correct, since", 4), Some('B'));
        // "I" is no option of MMLU: no letter rather than a wrong one.
        assert_eq!(choice_letter("I is the correct answer.", 4), None);
    }

    #[test]
    fn unicode_minus_is_a_minus() {
        assert_eq!(gsm8k_answer("She loses \u{2212}1 dollar.").as_deref(), Some("-1"));
        assert_eq!(math_answer("so x = \u{2212}3").as_deref(), Some("-3"));
        assert!(math_equal("\u{2212}\\frac{1}{2}", "-\\frac12"));
        assert!(!math_equal("\u{2212}1", "1"));
    }

    #[test]
    fn unbraced_box_keeps_an_escaped_dollar() {
        assert_eq!(last_boxed("$\\boxed \\$18.90$").as_deref(), Some("\\$18.90"));
        assert!(math_equal(&math_answer("$\\boxed \\$18.90$").unwrap(), "18.9"));
    }

    #[test]
    fn a_number_may_start_with_its_point() {
        assert_eq!(math_answer("The probability is $.3$").as_deref(), Some("0.3"));
        assert_eq!(numbers("-.25 and x.5"), vec!["-0.25"]);
        assert!(!math_equal("$.3$", "3"));
    }

    #[test]
    fn matrix_row_breaks_survive_normalisation() {
        let spaced = "\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}";
        let tight = "\\begin{pmatrix}1\\\\-2\\end{pmatrix}";
        assert!(math_equal(spaced, tight), "{:?} vs {:?}", normalize_math(spaced), normalize_math(tight));
        assert!(!math_equal(spaced, "\\begin{pmatrix}1-2\\end{pmatrix}"));
        assert!(!math_equal("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}12\\end{pmatrix}"));
        // A doubly escaped command is still the command.
        assert!(math_equal("\\\\frac{1}{2}", "\\frac12"));
    }

    #[test]
    fn unreduced_fractions_are_not_the_answer() {
        assert!(!math_equal("\\frac{2}{4}", "\\frac12"));
        assert!(!math_equal("\\frac{2}{4}", "0.5"));
        assert!(math_equal("\\frac{1}{2}", "0.5"));
        assert!(math_equal("\\frac{-1}{2}", "-0.5"));
    }

    #[test]
    fn code_comes_out_of_fences() {
        let t = "Here you go:\n```python\nimport math\ndef f(x):\n    return x\n```\nand a test:\n```\nf(1)\n```";
        assert_eq!(code_block(t), "import math\ndef f(x):\n    return x\n");
        assert_eq!(code_block("    return x\n"), "    return x\n");
        assert_eq!(code_block("```py\ndef g():\n    pass"), "def g():\n    pass");
    }
}
