import sys

from services.modelsync.daemon import main

sys.exit(main())
