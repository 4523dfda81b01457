//! Attribution's tables at their caps: what does not fit is counted as
//! lost, with its reason, never dropped silently.

use super::fixtures::AnyState;
use super::*;

/// The `i`th client-first close whose timewait socket still waits for the
/// peer's FIN; each has a 4-tuple of its own.
fn fw2_close(i: usize) -> SourceMsg {
    let mut ev = Event::new(i as i128, EventKind::State);
    ev.pid = Some(7);
    ev.family = Some(Family::Ipv4);
    ev.saddr = Some(IpAddr::from([10, 0, (i >> 16) as u8, (i >> 8) as u8]));
    ev.sport = Some(32768 + (i & 0xff) as u16);
    ev.daddr = Some(IpAddr::from([10, 1, 0, 1]));
    ev.dport = Some(5432);
    ev.old_state = Some(TcpState::FinWait2);
    ev.new_state = Some(TcpState::Close);
    SourceMsg::Event(ev, Hints::default())
}

#[test]
fn closes_past_the_fin_wait2_cap_are_reported_or_counted_as_overflow() {
    let table = AnyState::new(Some(TcpState::FinWait2));
    let mut a = Attributor::new(table.clone(), Offline);
    let mut out = Vec::new();
    let closes = MAX_FW2_PENDING + 1;
    for i in 0..closes {
        a.process_into(fw2_close(i), &mut out);
    }
    let lost: Vec<&Event> = out.iter().filter(|e| e.event == EventKind::Lost).collect();
    assert_eq!(lost.len(), 1, "one overflow, one lost event");
    assert_eq!(lost[0].lost_reason, Some(LostReason::Overflow));
    let given_up = lost[0].lost.unwrap_or(0) as usize;
    assert_eq!(given_up, MAX_FW2_PENDING / 8 + 1, "the oldest eighth");
    // The newest are still followed: the oldest left is the first kept.
    assert_eq!(a.oldest_pending(), Some(given_up as i128));

    // The peers' FINs arrive: every close is a TIME_WAIT reported, or one
    // of the lost ones.
    table.set(Some(TcpState::TimeWait));
    let tw = a.poll(closes as i128, false);
    assert!(tw.iter().all(|e| e.event == EventKind::Timewait));
    assert_eq!(tw.len() + given_up, closes);
}
