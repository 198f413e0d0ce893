"""SQL for the agents, one module per agent family (STYLE.md rule 1: one module owns SQL)."""
