from orchd.cli import main

raise SystemExit(main())
