//! What the person at the keyboard chose: sort orders, a filter, pause.
//! Keys are handled here, apart from the terminal, so that they are tested
//! without one.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};

use crate::escape::visible;
use crate::view::{DestSort, ProcSort, SnapshotOpts};

#[derive(Clone, Debug, Default)]
pub struct Ui {
    pub proc_sort: ProcSort,
    pub dest_sort: DestSort,
    pub filter: Option<String>,
    /// The filter being typed, when `/` was pressed.
    pub editing: Option<String>,
    /// The display is frozen (events are still counted).
    pub paused: bool,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    Quit,
}

/// A filter longer than this is not typed but pasted; it is cut.
const MAX_FILTER: usize = 64;

impl Ui {
    pub fn opts(&self) -> SnapshotOpts {
        SnapshotOpts {
            proc_sort: self.proc_sort,
            dest_sort: self.dest_sort,
            filter: self.filter.clone(),
        }
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if let Some(text) = self.editing.as_mut() {
            match k.code {
                KeyCode::Enter => {
                    self.filter = Some(std::mem::take(text)).filter(|f| !f.is_empty());
                    self.editing = None;
                }
                KeyCode::Esc => {
                    self.editing = None;
                    self.filter = None;
                }
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !c.is_control() && text.chars().count() < MAX_FILTER => {
                    text.push(c);
                }
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        match k.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('s') => self.proc_sort = self.proc_sort.next(),
            KeyCode::Char('d') => self.dest_sort = self.dest_sort.next(),
            KeyCode::Char('/') => self.editing = Some(self.filter.clone().unwrap_or_default()),
            KeyCode::Char('c') => self.filter = None,
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    /// ` matching "x"` for a pane title.
    pub fn filter_note(&self) -> String {
        match &self.filter {
            Some(f) => format!(", matching \"{}\"", visible(f)),
            None => String::new(),
        }
    }

    /// The last line: the filter being typed, or the keys.
    pub fn help_line(&self) -> Line<'static> {
        let key =
            |k: &'static str| Span::styled(k, Style::default().add_modifier(Modifier::REVERSED));
        if let Some(text) = &self.editing {
            return Line::from(vec![
                key("filter:"),
                Span::raw(format!(" {}_  (Enter apply, Esc clear)", visible(text))),
            ]);
        }
        Line::from(vec![
            key("q"),
            Span::raw(" quit "),
            key("s"),
            Span::raw(" sort processes "),
            key("d"),
            Span::raw(" sort destinations "),
            key("/"),
            Span::raw(" filter "),
            key("c"),
            Span::raw(" clear "),
            key("p"),
            Span::raw(if self.paused { " resume" } else { " pause" }),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(ui: &mut Ui, code: KeyCode) -> Action {
        ui.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn keys_sort_filter_pause_and_quit() {
        let mut ui = Ui::default();
        assert_eq!(press(&mut ui, KeyCode::Char('s')), Action::Redraw);
        assert_eq!(ui.proc_sort, ProcSort::TimewaitRate);
        press(&mut ui, KeyCode::Char('d'));
        assert_eq!(ui.dest_sort, DestSort::Exhaustion);
        press(&mut ui, KeyCode::Char('/'));
        for c in "curl".chars() {
            press(&mut ui, KeyCode::Char(c));
        }
        // While typing, q is a letter of the filter, not quit.
        assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Redraw);
        press(&mut ui, KeyCode::Backspace);
        press(&mut ui, KeyCode::Enter);
        assert_eq!(ui.filter.as_deref(), Some("curl"));
        assert_eq!(ui.opts().filter.as_deref(), Some("curl"));
        press(&mut ui, KeyCode::Char('p'));
        assert!(ui.paused);
        press(&mut ui, KeyCode::Char('c'));
        assert_eq!(ui.filter, None);
        assert_eq!(press(&mut ui, KeyCode::Char('x')), Action::Nothing);
        assert_eq!(press(&mut ui, KeyCode::Char('q')), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(Ui::default().key(ctrl_c), Action::Quit);
    }
}
