//! `portwatch top`: a full-screen live view, refreshed every `--interval`,
//! of the processes filling TIME_WAIT, each destination's ephemeral pool,
//! and recent failures with the holder of the port. `--once` prints one
//! snapshot (text, or `--json` for scripts) instead.
//!
//! The terminal is restored on every way out: `q`, Ctrl-C, SIGTERM, an
//! error (the [`Screen`] guard's drop) and a panic (ratatui's hook).

pub mod render;
pub mod ui;

use std::io::{self, IsTerminal, Write};

use anyhow::{bail, Context as _};
use crossterm::event::{Event as TermEvent, EventStream};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::live::{Live, Step};
use crate::cli::TopArgs;
use crate::timefmt::now_ns;
use crate::view::{Snapshot, ViewState};
use render::Shown;
use ui::{Action, Ui};

/// The terminal in raw mode on the alternate screen, given back on drop.
struct Screen(ratatui::DefaultTerminal);

impl Screen {
    fn open() -> anyhow::Result<Self> {
        match ratatui::try_init() {
            Ok(t) => Ok(Screen(t)),
            Err(e) => {
                ratatui::restore();
                Err(e).context("cannot take over the terminal")
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// The next terminal event; None when standard input has closed.
async fn next_key(keys: &mut EventStream) -> Option<io::Result<TermEvent>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *keys), cx))
        .await
}

/// `snap` drawn on a `width` x `height` screen, as text.
pub fn screen_text(
    snap: &Snapshot,
    ui: &Ui,
    own_netns: Option<u64>,
    offset: time::UtcOffset,
    width: u16,
    height: u16,
) -> anyhow::Result<String> {
    let mut term = Terminal::new(TestBackend::new(width, height))?;
    let shown = Shown {
        snap,
        ui,
        own_netns,
        offset,
    };
    term.draw(|f| render::draw(f, &shown))?;
    Ok(render::text(term.backend().buffer()))
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    // Read while the process has one thread: the offset is refused later.
    let offset = time::UtcOffset::current_local_offset().unwrap_or(time::UtcOffset::UTC);
    let own_netns = crate::system::netns_inode("self");
    if !args.once && !io::stdout().is_terminal() {
        bail!("portwatch top draws on a terminal; for scripts use `portwatch top --once --json`");
    }
    let mut view = ViewState::new(now_ns());
    let mut live = Live::start(args.interval, args.netns.as_deref(), &mut view).await?;
    view.begin(now_ns());
    eprintln!("portwatch: attached {}", live.describe());
    if args.once {
        return once(live, view, &args, own_netns, offset).await;
    }

    let mut screen = Screen::open()?;
    let mut keys = EventStream::new();
    let mut ui = Ui::default();
    let mut snap = view.snapshot(&ui.opts());
    let draw = |screen: &mut Screen, snap: &Snapshot, ui: &Ui| -> anyhow::Result<()> {
        let shown = Shown {
            snap,
            ui,
            own_netns,
            offset,
        };
        screen
            .0
            .draw(|f| render::draw(f, &shown))
            .context("drawing on the terminal")?;
        Ok(())
    };
    draw(&mut screen, &snap, &ui)?;
    loop {
        tokio::select! {
            step = live.next(&mut view) => match step {
                Step::Events(events) => events.iter().for_each(|e| view.add(e)),
                Step::Refreshed(_) => {
                    if !ui.paused {
                        snap = view.snapshot(&ui.opts());
                    }
                    draw(&mut screen, &snap, &ui)?;
                }
                Step::Stopped => break,
            },
            key = next_key(&mut keys) => match key {
                Some(Ok(TermEvent::Key(k))) => match ui.key(k) {
                    Action::Quit => break,
                    Action::Redraw => {
                        if !ui.paused {
                            snap = view.snapshot(&ui.opts());
                        }
                        draw(&mut screen, &snap, &ui)?;
                    }
                    Action::Nothing => {}
                },
                Some(Ok(TermEvent::Resize(..))) => draw(&mut screen, &snap, &ui)?,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("reading the keyboard"),
                None => break,
            },
        }
    }
    drop(screen);
    live.finish(&mut view).await;
    Ok(())
}

/// One refresh, then the snapshot on standard output.
async fn once(
    mut live: Live,
    mut view: ViewState,
    args: &TopArgs,
    own_netns: Option<u64>,
    offset: time::UtcOffset,
) -> anyhow::Result<()> {
    while let Step::Events(events) = live.next(&mut view).await {
        events.iter().for_each(|e| view.add(e));
    }
    for e in live.finish(&mut view).await {
        view.add(&e);
    }
    let snap = view.snapshot(&Default::default());
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &snap)?;
        out.write_all(b"\n")?;
    } else {
        let (w, h) = crossterm::terminal::size().unwrap_or((80, 24));
        out.write_all(screen_text(&snap, &Ui::default(), own_netns, offset, w, h)?.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
