//! Test fixtures shared by attribution's tests and the pipeline's.

use std::cell::Cell;
use std::rc::Rc;

use super::{PortSocket, SocketProbe, Tuple};
use crate::model::TcpState;

/// A socket table that says every socket is in the state set last (a
/// clone given to the attributor sees what the test sets on its own).
#[derive(Clone, Default)]
pub struct AnyState(Rc<Cell<Option<TcpState>>>);

impl AnyState {
    pub fn new(state: Option<TcpState>) -> Self {
        AnyState(Rc::new(Cell::new(state)))
    }

    pub fn set(&self, state: Option<TcpState>) {
        self.0.set(state);
    }
}

impl SocketProbe for AnyState {
    fn tcp_state(&mut self, _: Option<u64>, _: Tuple) -> Option<TcpState> {
        self.0.get()
    }
    fn on_port(&mut self, _: Option<u64>, _: u16) -> Result<Vec<PortSocket>, String> {
        Ok(Vec::new())
    }
}
