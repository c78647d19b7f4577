from imcsim.cli import entry

entry()
