from monitor.training.fit import main

raise SystemExit(main())
