//! What a graph view draws: a neighbourhood of some images, never the
//! whole lineage (100,000 images do not fit a screen), with counts of what
//! is left out so the view can say "+12 more".

use std::collections::{HashMap, VecDeque};

use petgraph::Direction;
use petgraph::graph::NodeIndex;

use super::Lineage;
use crate::registry::ImageRef;

/// One image in a neighbourhood.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeView {
    pub name: ImageRef,
    pub managed: bool,
    /// Steps from the nearest centre: negative for ancestors, 0 for the
    /// centres, positive for descendants.
    pub distance: i32,
    /// Parents and children not in the view.
    pub hidden_parents: usize,
    pub hidden_children: usize,
}

/// A drawable part of the lineage: nodes, and edges (parent → child, as
/// indexes into `nodes`) among them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Neighbourhood {
    pub nodes: Vec<NodeView>,
    pub edges: Vec<(usize, usize)>,
    /// The node limit cut the walk short.
    pub truncated: bool,
}

impl Lineage {
    /// The centres, their ancestors up to `up` steps and descendants down
    /// to `down` steps, nearest first, at most `limit` nodes (the centres
    /// always). Unknown centres are skipped.
    pub fn neighbourhood(
        &self,
        centres: &[ImageRef],
        up: u32,
        down: u32,
        limit: usize,
    ) -> Neighbourhood {
        let mut distance: HashMap<NodeIndex, i32> = HashMap::new();
        let mut order: Vec<NodeIndex> = Vec::new();
        let mut queue: VecDeque<(NodeIndex, i32)> = VecDeque::new();
        for c in centres {
            if let Some(&n) = self.index.get(c)
                && !distance.contains_key(&n)
            {
                distance.insert(n, 0);
                order.push(n);
                queue.push_back((n, 0));
            }
        }
        let mut truncated = false;
        // Breadth first in both directions at once: the nearest images are
        // kept when the limit cuts.
        while let Some((n, d)) = queue.pop_front() {
            let mut next = Vec::new();
            if d <= 0 && d.unsigned_abs() < up {
                next.extend(
                    self.graph
                        .neighbors_directed(n, Direction::Incoming)
                        .map(|m| (m, d - 1)),
                );
            }
            if d >= 0 && d.unsigned_abs() < down {
                next.extend(
                    self.graph
                        .neighbors_directed(n, Direction::Outgoing)
                        .map(|m| (m, d + 1)),
                );
            }
            next.sort_by(|a, b| self.graph[a.0].name.cmp(&self.graph[b.0].name));
            for (m, dm) in next {
                if distance.contains_key(&m) {
                    continue;
                }
                if order.len() >= limit.max(centres.len()) {
                    truncated = true;
                    continue;
                }
                distance.insert(m, dm);
                order.push(m);
                queue.push_back((m, dm));
            }
        }
        let position: HashMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut edges = Vec::new();
        let nodes = order
            .iter()
            .map(|&n| {
                let mut hidden_parents = 0;
                for p in self.graph.neighbors_directed(n, Direction::Incoming) {
                    match position.get(&p) {
                        Some(&i) => edges.push((i, position[&n])),
                        None => hidden_parents += 1,
                    }
                }
                let hidden_children = self
                    .graph
                    .neighbors_directed(n, Direction::Outgoing)
                    .filter(|c| !position.contains_key(c))
                    .count();
                NodeView {
                    name: self.graph[n].name.clone(),
                    managed: self.graph[n].managed,
                    distance: distance[&n],
                    hidden_parents,
                    hidden_children,
                }
            })
            .collect();
        edges.sort_unstable();
        Neighbourhood {
            nodes,
            edges,
            truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::lineage::Lineage;
    use crate::registry::ImageRef;

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    /// base → mid → {a, b}; a → leaf; other → b (a second parent of b).
    fn lineage() -> Lineage {
        let yaml = "backends: { ci: { kind: webhook, url: http://127.0.0.1:9/ } }\nimages:\n\
            - { name: r.io/mid:1, from: [base:1], build: { backend: ci } }\n\
            - { name: r.io/a:1, from: [r.io/mid:1], build: { backend: ci } }\n\
            - { name: r.io/b:1, from: [r.io/mid:1, other:1], build: { backend: ci } }\n\
            - { name: r.io/leaf:1, from: [r.io/a:1], build: { backend: ci } }\n";
        let cfg = crate::config::load_str("t.yaml", yaml, &|_| None).unwrap();
        Lineage::new(&cfg.images)
    }

    #[test]
    fn ancestors_and_descendants_with_hidden_counts() {
        let n = lineage().neighbourhood(&[r("r.io/mid:1")], 1, 1, 100);
        let names: Vec<(String, i32, usize, usize)> = n
            .nodes
            .iter()
            .map(|v| {
                (
                    v.name.to_string(),
                    v.distance,
                    v.hidden_parents,
                    v.hidden_children,
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("r.io/mid:1".to_string(), 0, 0, 0),
                ("docker.io/library/base:1".to_string(), -1, 0, 0),
                ("r.io/a:1".to_string(), 1, 0, 1),
                ("r.io/b:1".to_string(), 1, 1, 0),
            ]
        );
        assert_eq!(n.edges, [(0, 2), (0, 3), (1, 0)]);
        assert!(!n.truncated);
    }

    #[test]
    fn the_limit_keeps_the_nearest_and_says_so() {
        let n = lineage().neighbourhood(&[r("base:1")], 0, 3, 3);
        let names: Vec<String> = n.nodes.iter().map(|v| v.name.to_string()).collect();
        assert_eq!(
            names,
            ["docker.io/library/base:1", "r.io/mid:1", "r.io/a:1"]
        );
        assert!(n.truncated);
        // What is cut shows as hidden children.
        assert_eq!(n.nodes[1].hidden_children, 1);
        assert_eq!(n.nodes[2].hidden_children, 1);
        // Unknown centres are skipped; several centres share the view.
        let n = lineage().neighbourhood(&[r("nope:1"), r("r.io/leaf:1"), r("r.io/b:1")], 0, 0, 10);
        assert_eq!(n.nodes.len(), 2);
        assert!(n.edges.is_empty());
    }
}
