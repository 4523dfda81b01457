//! `cargo +nightly fuzz run replay_reader`: a recording is anyone's to write
//! (`trace --replay FILE`), so reading it, and running what was read through
//! attribution, aggregation and both output formats, must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portwatch::attribution::{Attributor, Offline};
use portwatch::filter::EventFilter;
use portwatch::model::{Hints, SourceMsg};
use portwatch::output::{JsonSink, Sink, TextSink};
use portwatch::pipeline::Pipeline;

fuzz_target!(|data: &[u8]| {
    let Ok(recording) = portwatch::source::replay::read(data) else {
        return;
    };
    // Both sinks: text escapes and pads what the recording chose, JSON
    // writes it back exactly.
    let sinks: [Box<dyn Sink>; 2] = [
        Box::new(JsonSink::new(std::io::sink())),
        Box::new(TextSink::new(std::io::sink(), true)),
    ];
    for sink in sinks {
        let mut pipeline = Pipeline::new(
            Attributor::new(Offline, Offline),
            EventFilter::default(),
            recording.range,
            sink,
        );
        if let Some((start, _)) = recording.run {
            pipeline = pipeline.started_at(start);
        }
        let mut last = recording.run.map_or(0, |(_, end)| end);
        for ev in recording.events.iter().cloned() {
            last = last.max(ev.time);
            let hints = Hints {
                replayed: true,
                ..Hints::default()
            };
            let _ = pipeline.handle(SourceMsg::Event(ev, hints));
        }
        let _ = pipeline.finish(last);
    }
});
