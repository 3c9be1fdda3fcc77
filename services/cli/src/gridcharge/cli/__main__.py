from gridcharge.cli.main import main

raise SystemExit(main())
