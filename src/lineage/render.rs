//! The lineage as DOT (Graphviz), Mermaid or JSON. Edges go parent → child,
//! the direction a change travels.

use std::fmt::Write as _;

use super::Lineage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

#[derive(serde::Serialize)]
struct JsonImage {
    name: String,
    managed: bool,
    parents: Vec<String>,
    children: Vec<String>,
}

#[derive(serde::Serialize)]
struct JsonEdge {
    parent: String,
    child: String,
}

impl Lineage {
    pub fn render(&self, format: GraphFormat) -> String {
        match format {
            GraphFormat::Dot => self.dot(),
            GraphFormat::Mermaid => self.mermaid(),
            GraphFormat::Json => self.json(),
        }
    }

    fn sorted_nodes(&self) -> Vec<(usize, String, bool)> {
        let mut v: Vec<(usize, String, bool)> = self
            .nodes()
            .map(|(n, name, managed)| (n.index(), name.to_string(), managed))
            .collect();
        v.sort_by(|a, b| a.1.cmp(&b.1));
        v
    }

    fn sorted_edges(&self) -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = self
            .edges()
            .map(|(p, c)| {
                (
                    self.graph[p].name.to_string(),
                    self.graph[c].name.to_string(),
                )
            })
            .collect();
        e.sort();
        e
    }

    fn dot(&self) -> String {
        let mut out = String::from(
            "digraph lineage {\n  rankdir=TB;\n  node [shape=box, fontname=\"Helvetica\"];\n",
        );
        for (_, name, managed) in self.sorted_nodes() {
            let style = if managed {
                "style=filled, fillcolor=\"#dbeafe\""
            } else {
                "style=dashed"
            };
            let _ = writeln!(
                out,
                "  {} [label={}, {style}];",
                quote(&name),
                quote(&familiar(&name))
            );
        }
        for (p, c) in self.sorted_edges() {
            let _ = writeln!(out, "  {} -> {};", quote(&p), quote(&c));
        }
        out.push_str("}\n");
        out
    }

    fn mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let nodes = self.sorted_nodes();
        let mut id = vec![0usize; self.len()];
        for (i, (n, name, managed)) in nodes.iter().enumerate() {
            id[*n] = i;
            let label = familiar(name).replace('"', "#quot;");
            let class = if *managed { "managed" } else { "external" };
            let _ = writeln!(out, "  n{i}[\"{label}\"]:::{class}");
        }
        let mut edges: Vec<(usize, usize)> = self
            .edges()
            .map(|(p, c)| (id[p.index()], id[c.index()]))
            .collect();
        edges.sort();
        for (p, c) in edges {
            let _ = writeln!(out, "  n{p} --> n{c}");
        }
        out.push_str("  classDef managed fill:#dbeafe,stroke:#1e40af\n");
        out.push_str("  classDef external stroke-dasharray: 5 5\n");
        out
    }

    fn json(&self) -> String {
        let images: Vec<JsonImage> = self
            .sorted_nodes()
            .into_iter()
            .map(|(n, name, managed)| {
                let r = &self.graph[petgraph::graph::NodeIndex::new(n)].name;
                JsonImage {
                    name,
                    managed,
                    parents: self.parents(r).iter().map(ToString::to_string).collect(),
                    children: self.children(r).iter().map(ToString::to_string).collect(),
                }
            })
            .collect();
        let edges: Vec<JsonEdge> = self
            .sorted_edges()
            .into_iter()
            .map(|(parent, child)| JsonEdge { parent, child })
            .collect();
        let v = serde_json::json!({ "images": images, "edges": edges });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}

fn familiar(name: &str) -> String {
    crate::registry::ImageRef::parse(name)
        .map(|r| r.familiar())
        .unwrap_or_else(|_| name.to_string())
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
