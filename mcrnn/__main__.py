from mcrnn.cli import main

raise SystemExit(main())
