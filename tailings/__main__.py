from tailings.cli import main

raise SystemExit(main())
