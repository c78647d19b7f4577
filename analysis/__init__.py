"""imcsim.analysis: queries and figures over trace files."""
