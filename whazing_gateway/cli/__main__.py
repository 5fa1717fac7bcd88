import sys

from whazing_gateway.cli import main

sys.exit(main())
