from bmrs.run.cli import main

raise SystemExit(main())
