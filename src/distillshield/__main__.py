"""python -m distillshield"""

from distillshield.cli import main

main()
