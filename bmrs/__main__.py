from bmrs.cli import main

raise SystemExit(main())
