//! Placement, like Diego's auction: among the cells that have the stack and room (memory,
//! disk, a container) and are not evacuating, the least-loaded zone for this process first,
//! then the cell with the lowest score: the average fraction of memory, disk and containers
//! in use after placement, plus 0.25 per starting container, plus 1000 per instance of the
//! same process already there.

use std::collections::BTreeMap;

use kiln_bus::cell::CellState;

/// What an instance needs.
#[derive(Debug, Clone)]
pub struct Need<'a> {
    /// Its stack; empty: any cell (an image droplet brings its own filesystem).
    pub stack: &'a str,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Disk, MiB.
    pub disk_mb: u64,
}

/// A cell as placement sees it, with what this pass placed on it already taken off.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The cell's advertisement.
    pub state: CellState,
    /// Instances of the process being placed already on the cell.
    pub same_process: u64,
}

/// Why no cell fits, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPlacement {
    /// No cell at all.
    #[error("no cell is running: start an executor")]
    NoCells,
    /// No cell has the stack.
    #[error("no cell has stack {stack} (cells have: {have})")]
    NoStack {
        /// The stack asked for.
        stack: String,
        /// The stacks the cells have.
        have: String,
    },
    /// Cells have the stack but not the room.
    #[error("insufficient resources: no cell with stack {stack} has {memory_mb} MiB memory, {disk_mb} MiB disk and a container free")]
    Insufficient {
        /// The stack.
        stack: String,
        /// Memory asked.
        memory_mb: u64,
        /// Disk asked.
        disk_mb: u64,
    },
}

fn fits(c: &CellState, need: &Need) -> bool {
    c.available_memory_mb >= need.memory_mb
        && c.available_disk_mb >= need.disk_mb
        && c.available_containers >= 1
}

fn used_after(total: u64, available: u64, taking: u64) -> f64 {
    if total == 0 {
        return 1.0;
    }
    (total.saturating_sub(available) + taking) as f64 / total as f64
}

fn score(c: &Candidate, need: &Need) -> f64 {
    let s = &c.state;
    let memory = used_after(s.total_memory_mb, s.available_memory_mb, need.memory_mb);
    let disk = used_after(s.total_disk_mb, s.available_disk_mb, need.disk_mb);
    let containers = used_after(s.total_containers, s.available_containers, 1);
    (memory + disk + containers) / 3.0 + 0.25 * s.starting as f64 + 1000.0 * c.same_process as f64
}

/// The index in `cells` of the cell to place on.
pub fn place(cells: &[Candidate], need: &Need) -> Result<usize, NoPlacement> {
    let live: Vec<(usize, &Candidate)> = cells
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.state.evacuating)
        .collect();
    if live.is_empty() {
        return Err(NoPlacement::NoCells);
    }
    let with_stack: Vec<(usize, &Candidate)> = live
        .iter()
        .copied()
        .filter(|(_, c)| need.stack.is_empty() || c.state.stacks.iter().any(|s| s == need.stack))
        .collect();
    if with_stack.is_empty() {
        let mut have: Vec<&str> = live
            .iter()
            .flat_map(|(_, c)| c.state.stacks.iter().map(String::as_str))
            .collect();
        have.sort_unstable();
        have.dedup();
        return Err(NoPlacement::NoStack {
            stack: need.stack.to_string(),
            have: have.join(", "),
        });
    }
    // Instances of this process per zone, over every cell with the stack.
    let mut per_zone: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, c) in &with_stack {
        *per_zone.entry(c.state.zone.as_str()).or_default() += c.same_process;
    }
    let best = with_stack
        .iter()
        .filter(|(_, c)| fits(&c.state, need))
        .min_by(|(_, a), (_, b)| {
            let za = per_zone.get(a.state.zone.as_str()).copied().unwrap_or(0);
            let zb = per_zone.get(b.state.zone.as_str()).copied().unwrap_or(0);
            za.cmp(&zb)
                .then(score(a, need).total_cmp(&score(b, need)))
                .then(a.state.cell_id.cmp(&b.state.cell_id))
        });
    best.map(|(i, _)| *i).ok_or(NoPlacement::Insufficient {
        stack: need.stack.to_string(),
        memory_mb: need.memory_mb,
        disk_mb: need.disk_mb,
    })
}

/// Takes what an instance placed on `c` uses off its advertised room.
pub fn reserve(c: &mut Candidate, need: &Need) {
    let s = &mut c.state;
    s.available_memory_mb = s.available_memory_mb.saturating_sub(need.memory_mb);
    s.available_disk_mb = s.available_disk_mb.saturating_sub(need.disk_mb);
    s.available_containers = s.available_containers.saturating_sub(1);
    s.starting += 1;
    c.same_process += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(id: &str, zone: &str, stacks: &[&str], memory: u64) -> Candidate {
        Candidate {
            state: CellState {
                cell_id: id.into(),
                zone: zone.into(),
                stacks: stacks.iter().map(|s| s.to_string()).collect(),
                total_memory_mb: 4096,
                available_memory_mb: memory,
                total_disk_mb: 8192,
                available_disk_mb: 8192,
                total_containers: 50,
                available_containers: 50,
                instances_per_app: Default::default(),
                starting: 0,
                evacuating: false,
            },
            same_process: 0,
        }
    }

    const NEED: Need = Need {
        stack: "tiny",
        memory_mb: 256,
        disk_mb: 1024,
    };

    #[test]
    fn instances_spread_across_zones_then_cells() {
        let mut cells = vec![
            cell("a1", "z1", &["tiny"], 4096),
            cell("a2", "z1", &["tiny"], 4096),
            cell("b1", "z2", &["tiny"], 4096),
        ];
        let mut placed = Vec::new();
        for _ in 0..3 {
            let i = place(&cells, &NEED).unwrap();
            reserve(&mut cells[i], &NEED);
            placed.push(cells[i].state.cell_id.clone());
        }
        assert_eq!(placed[0], "a1", "equal cells: lowest id");
        assert_eq!(placed[1], "b1", "the other zone next");
        assert_eq!(placed[2], "a2", "then the empty cell of the first zone");
    }

    #[test]
    fn the_less_loaded_cell_wins() {
        let cells = vec![
            cell("busy", "z", &["tiny"], 1024),
            cell("idle", "z", &["tiny"], 4000),
        ];
        assert_eq!(place(&cells, &NEED), Ok(1));
    }

    #[test]
    fn no_fit_says_why() {
        assert_eq!(place(&[], &NEED), Err(NoPlacement::NoCells));
        let cells = vec![cell("c", "z", &["bookworm"], 4096)];
        let err = place(&cells, &NEED).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no cell has stack tiny (cells have: bookworm)"
        );
        let cells = vec![cell("c", "z", &["tiny"], 100)];
        assert!(place(&cells, &NEED)
            .unwrap_err()
            .to_string()
            .starts_with("insufficient resources"));
        let mut draining = cell("c", "z", &["tiny"], 4096);
        draining.state.evacuating = true;
        assert_eq!(place(&[draining], &NEED), Err(NoPlacement::NoCells));
    }
}
