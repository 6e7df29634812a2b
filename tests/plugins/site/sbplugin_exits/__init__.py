"""A plugin whose import calls sys.exit: loading it must not end the process that loads it."""

raise SystemExit("a plugin called sys.exit")
