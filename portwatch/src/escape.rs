//! Text that a process or a user controls, made safe for a terminal.
//!
//! An error message pasted into `portwatch explain`, or a log line piped into
//! it, can hold escape sequences that recolour, move the cursor or retitle
//! the terminal, and bidirectional-override characters that make text read
//! differently from what it is. [`visible`] shows every such character as a
//! visible escape (`\e`, `\n`, `\x07`, `\u{202e}`) so that what is printed is
//! what was received. Ordinary text, including non-ASCII letters and
//! backslashes in Windows paths, passes through unchanged.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters that change how the rest of a line is displayed without being
/// control characters: the Unicode bidirectional embeddings, overrides and
/// isolates, and the directional marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c)
}

/// `s` with control characters (C0, DEL, C1) and bidirectional controls
/// replaced by visible escapes; borrowed when there is nothing to replace.
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if (c as u32) < 0x100 && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let s = r"C:\Program Files\app: Only one usage of each socket address — ü";
        assert!(matches!(visible(s), Cow::Borrowed(_)));
        assert_eq!(visible(s), s);
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(
            visible("a\x1b[31mred\x1b[0m\x07\n\tb\r\x7f\u{9b}"),
            r"a\e[31mred\e[0m\x07\n\tb\r\x7f\x9b"
        );
        // A right-to-left override would make "exe.txt" read as "txt.exe".
        assert_eq!(visible("evil\u{202e}txt.exe"), r"evil\u{202e}txt.exe");
        assert_eq!(visible("\u{2066}x\u{2069}"), r"\u{2066}x\u{2069}");
    }

    #[test]
    fn every_escaped_output_is_free_of_controls() {
        let all: String = (0u32..0x300).filter_map(char::from_u32).collect();
        let out = visible(&all);
        assert!(!out.chars().any(needs_escape), "{out:?}");
    }
}
