"""Training loops, one per file, written against the Protocols in rlpt.loops.common."""
