"""`python -m radixserve.server`: the same as `radixserve serve`."""

import sys

from radixserve.server.launch import main

sys.exit(main())
