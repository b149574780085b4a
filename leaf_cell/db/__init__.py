"""The leaf cell's database: one rack's nodes, ports and traits."""
