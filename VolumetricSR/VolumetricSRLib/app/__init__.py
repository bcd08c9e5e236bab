"""What users and Slicer run: the command line, the run layer under it, the event protocol between a
child process and its parent, many studies in one run, the child runner and the demo. May import
every other package of the core."""
