"""imcsim.scenarios: what happens to devices over time, and ready-to-run scenario files."""
