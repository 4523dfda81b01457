//! The terminal portwatch writes to, if it writes to one: its width (text
//! is fitted to it there, full lines are written to pipes and files) and
//! whether to colour.

use std::io::IsTerminal;

use crate::cli::ColorChoice;

/// The narrowest width text is fitted to; below it lines are cut anyway.
pub const MIN_WIDTH: usize = 40;

/// The width to fit stdout's text to: None when stdout is not a terminal
/// (full lines for pipes and files), else `$COLUMNS` or the terminal's.
pub fn stdout_width() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let columns = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0);
    Some(columns.or_else(ioctl_width).unwrap_or(80).max(MIN_WIDTH))
}

#[cfg(unix)]
fn ioctl_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes one winsize into the struct it is given.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

#[cfg(not(unix))]
fn ioctl_width() -> Option<usize> {
    None
}

/// Whether to colour stdout's text.
pub fn color(choice: ColorChoice) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
        }
    }
}

/// `s` on lines of at most `width` characters, broken at spaces where it
/// can be (a word longer than a line is cut), the lines after the first
/// indented by `indent` spaces.
pub fn wrap(s: &str, width: usize, indent: usize) -> Vec<String> {
    // Leading spaces stay on the first line.
    let body = s.trim_start_matches(' ');
    let lead = s.len() - body.len();
    let s = body;
    let width = width.saturating_sub(lead).max(1);
    let indent = indent.saturating_sub(lead);
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    let room = |first: bool| {
        if first {
            width
        } else {
            width.saturating_sub(indent).max(1)
        }
    };
    for word in s.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let limit = room(lines.is_empty());
            let sep = usize::from(len > 0);
            if len + sep + word.len() <= limit {
                if sep == 1 {
                    line.push(' ');
                }
                line.extend(word.iter());
                len += sep + word.len();
                break;
            }
            if len > 0 {
                lines.push(std::mem::take(&mut line));
                len = 0;
                continue;
            }
            // A word longer than a whole line: cut it.
            let rest = word.split_off(limit.min(word.len()));
            line.extend(word.iter());
            lines.push(std::mem::take(&mut line));
            word = rest;
            if word.is_empty() {
                break;
            }
        }
    }
    if len > 0 || lines.is_empty() {
        lines.push(line);
    }
    let pad = " ".repeat(indent + lead);
    for l in lines.iter_mut().skip(1) {
        l.insert_str(0, &pad);
    }
    if let Some(first) = lines.first_mut() {
        first.insert_str(0, &" ".repeat(lead));
    }
    lines
}

/// `s` cut to `max` characters, marked with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_at_spaces_with_a_hanging_indent() {
        let lines = wrap("one two three four five six", 10, 2);
        assert_eq!(lines, ["one two", "  three", "  four", "  five six"]);
        assert!(lines.iter().all(|l| l.chars().count() <= 10));
        assert_eq!(wrap("short", 10, 4), ["short"]);
        assert_eq!(wrap("  aa bb cc", 7, 4), ["  aa bb", "    cc"]);
        assert_eq!(wrap("", 10, 4), [""]);
    }

    #[test]
    fn cuts_a_word_longer_than_a_line() {
        let lines = wrap("abcdefghijkl xy", 5, 1);
        assert!(lines.iter().all(|l| l.chars().count() <= 5), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), "abcdefghijklxy");
    }

    #[test]
    fn cuts_with_a_mark() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
        assert_eq!(cut("ééééé", 3).chars().count(), 3);
    }
}
