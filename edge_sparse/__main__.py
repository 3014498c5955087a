from edge_sparse.cli import main

raise SystemExit(main())
