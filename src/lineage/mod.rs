//! The lineage graph: which image is built from which, and the rollout plan
//! (waves of rebuilds) a set of changed images causes.

mod generate;
mod neighbourhood;
mod render;

pub use neighbourhood::{Neighbourhood, NodeView};

use std::collections::{HashMap, VecDeque};

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::config::Image;
use crate::registry::ImageRef;

pub use generate::{generate_files, generate_yaml};
pub use render::GraphFormat;

#[derive(Debug, Clone)]
struct Node {
    name: ImageRef,
    managed: bool,
}

/// An acyclic lineage graph. Edges point from parent to child, the direction
/// in which changes travel.
#[derive(Debug, Clone)]
pub struct Lineage {
    graph: DiGraph<Node, ()>,
    index: HashMap<ImageRef, NodeIndex>,
}

/// The rebuilds a change causes, in dependency order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Plan {
    /// The changed images, normalised, sorted, deduplicated.
    pub changed: Vec<ImageRef>,
    /// `waves[k]` holds the images rebuilt in wave k+1, sorted.
    pub waves: Vec<Vec<ImageRef>>,
}

impl Plan {
    pub fn image_count(&self) -> usize {
        self.waves.iter().map(Vec::len).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("image {0} is not in the lineage")]
    UnknownImage(ImageRef),
}

impl Lineage {
    /// Builds the graph from validated images (acyclic, every parent
    /// declared or implicit, as `config::load` guarantees).
    pub fn new(images: &[Image]) -> Lineage {
        let mut graph = DiGraph::with_capacity(images.len(), images.len() * 2);
        let mut index = HashMap::with_capacity(images.len());
        for img in images {
            let n = graph.add_node(Node {
                name: img.name.clone(),
                managed: img.is_managed(),
            });
            index.insert(img.name.clone(), n);
        }
        for img in images {
            let child = index[&img.name];
            for p in &img.parents {
                if let Some(&parent) = index.get(p) {
                    graph.add_edge(parent, child, ());
                }
            }
        }
        Lineage { graph, index }
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn contains(&self, image: &ImageRef) -> bool {
        self.index.contains_key(image)
    }

    pub fn is_managed(&self, image: &ImageRef) -> Option<bool> {
        self.index.get(image).map(|&n| self.graph[n].managed)
    }

    /// Direct parents (`from:`), sorted.
    pub fn parents(&self, image: &ImageRef) -> Vec<ImageRef> {
        self.neighbours(image, Direction::Incoming)
    }

    /// Direct children, sorted.
    pub fn children(&self, image: &ImageRef) -> Vec<ImageRef> {
        self.neighbours(image, Direction::Outgoing)
    }

    fn neighbours(&self, image: &ImageRef, dir: Direction) -> Vec<ImageRef> {
        let Some(&n) = self.index.get(image) else {
            return Vec::new();
        };
        let mut v: Vec<ImageRef> = self
            .graph
            .neighbors_directed(n, dir)
            .map(|m| self.graph[m].name.clone())
            .collect();
        v.sort();
        v
    }

    /// Plans the rollout for `changed` images.
    ///
    /// The affected images are the managed descendants of the changed ones,
    /// reached through managed images only: an external image in between
    /// stops the walk, since lineaged does not rebuild it and its own change
    /// will be seen when it happens. A changed image is itself in a wave only
    /// when it also descends from another changed image. Each affected image
    /// is in wave 1 + the highest wave among its affected parents.
    pub fn plan(&self, changed: &[ImageRef]) -> Result<Plan, PlanError> {
        let mut starts = Vec::with_capacity(changed.len());
        for c in changed {
            let n = *self
                .index
                .get(c)
                .ok_or_else(|| PlanError::UnknownImage(c.clone()))?;
            starts.push(n);
        }
        let mut changed: Vec<ImageRef> = changed.to_vec();
        changed.sort();
        changed.dedup();
        let waves = self.waves(&starts, &[]);
        Ok(Plan { changed, waves })
    }

    /// Plans rebuilds of `stale` managed images themselves (wave 1 unless
    /// one descends from another) and of their managed descendants: what
    /// reconcile runs for images whose base moved while nobody watched.
    pub fn plan_rebuild(&self, stale: &[ImageRef]) -> Result<Plan, PlanError> {
        let mut seeds = Vec::with_capacity(stale.len());
        for c in stale {
            let n = *self
                .index
                .get(c)
                .ok_or_else(|| PlanError::UnknownImage(c.clone()))?;
            if self.graph[n].managed {
                seeds.push(n);
            }
        }
        let mut changed: Vec<ImageRef> = stale.to_vec();
        changed.sort();
        changed.dedup();
        let waves = self.waves(&seeds, &seeds);
        Ok(Plan { changed, waves })
    }

    /// Waves over the managed descendants of `starts`, plus `include`
    /// (managed images that are rebuilt themselves).
    fn waves(&self, starts: &[NodeIndex], include: &[NodeIndex]) -> Vec<Vec<ImageRef>> {
        let count = self.graph.node_count();
        let mut expanded = vec![false; count];
        let mut affected = vec![false; count];
        let mut queue: VecDeque<NodeIndex> = VecDeque::new();
        let mut members = Vec::new();
        for &s in include {
            if !affected[s.index()] {
                affected[s.index()] = true;
                members.push(s);
            }
        }
        for &s in starts {
            if !expanded[s.index()] {
                expanded[s.index()] = true;
                queue.push_back(s);
            }
        }
        while let Some(n) = queue.pop_front() {
            for c in self.graph.neighbors_directed(n, Direction::Outgoing) {
                let ci = c.index();
                if !self.graph[c].managed || affected[ci] {
                    continue;
                }
                affected[ci] = true;
                members.push(c);
                if !expanded[ci] {
                    expanded[ci] = true;
                    queue.push_back(c);
                }
            }
        }

        // Kahn's algorithm over the affected subgraph: longest path = wave.
        let mut pending = vec![0u32; count];
        for &m in &members {
            pending[m.index()] = self
                .graph
                .neighbors_directed(m, Direction::Incoming)
                .filter(|p| affected[p.index()])
                .count() as u32;
        }
        let mut wave = vec![0u32; count];
        let mut ready: Vec<NodeIndex> = members
            .iter()
            .copied()
            .filter(|m| pending[m.index()] == 0)
            .collect();
        let mut waves: Vec<Vec<ImageRef>> = Vec::new();
        while let Some(n) = ready.pop() {
            let w = wave[n.index()].max(1);
            if waves.len() < w as usize {
                waves.resize_with(w as usize, Vec::new);
            }
            waves[w as usize - 1].push(self.graph[n].name.clone());
            for c in self.graph.neighbors_directed(n, Direction::Outgoing) {
                let ci = c.index();
                if !affected[ci] {
                    continue;
                }
                wave[ci] = wave[ci].max(w + 1);
                pending[ci] -= 1;
                if pending[ci] == 0 {
                    ready.push(c);
                }
            }
        }
        for w in &mut waves {
            w.sort();
        }
        waves
    }

    pub(crate) fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &ImageRef, bool)> {
        self.graph
            .node_indices()
            .map(|n| (n, &self.graph[n].name, self.graph[n].managed))
    }

    pub(crate) fn edges(&self) -> impl Iterator<Item = (NodeIndex, NodeIndex)> + '_ {
        self.graph
            .edge_indices()
            .filter_map(|e| self.graph.edge_endpoints(e))
    }
}

/// Every cycle in the images' `from:` relation, each as image indices in
/// order (each one built from the next, the last from the first), starting
/// at the first-declared image on it.
pub fn find_cycles(images: &[Image]) -> Vec<Vec<usize>> {
    let index: HashMap<&ImageRef, usize> = images
        .iter()
        .enumerate()
        .map(|(i, img)| (&img.name, i))
        .collect();
    // Edges child → parent, i.e. "built from".
    let mut graph: DiGraph<usize, ()> = DiGraph::with_capacity(images.len(), images.len());
    let nodes: Vec<NodeIndex> = (0..images.len()).map(|i| graph.add_node(i)).collect();
    for (i, img) in images.iter().enumerate() {
        for p in &img.parents {
            if let Some(&j) = index.get(p) {
                graph.add_edge(nodes[i], nodes[j], ());
            }
        }
    }
    let mut cycles = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let Some(&start) = scc.iter().min_by_key(|n| graph[**n]) else {
            continue;
        };
        if self_loop {
            cycles.push(vec![graph[start]]);
            continue;
        }
        // Shortest way from `start` back to itself inside the component.
        let in_scc: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'bfs: while let Some(n) = queue.pop_front() {
            for m in graph.neighbors(n) {
                if m == start {
                    last = Some(n);
                    break 'bfs;
                }
                if in_scc.contains(&m) && !prev.contains_key(&m) {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
        let Some(mut at) = last else { continue };
        let mut path = vec![graph[at]];
        while at != start {
            at = prev[&at];
            path.push(graph[at]);
        }
        path.reverse();
        cycles.push(path);
    }
    cycles.sort();
    cycles
}

#[cfg(test)]
mod tests;
