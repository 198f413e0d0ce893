#!/usr/bin/env python3
"""Write a synthetic Companies House "BasicCompanyData" CSV of any size.

The generator lives in ``agents/companies_generator.py`` so that an installed
agent-runner (the demo) has it too; this is its command line.
Usage: scripts/generate_companies.py --rows N --out FILE [--seed S] [--bad-rows K]
"""

import sys

from agents.companies_generator import main

if __name__ == "__main__":
    sys.exit(main())
