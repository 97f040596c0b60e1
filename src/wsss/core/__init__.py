"""The bottom layer: what every other layer may import and which imports no other layer:
errors and exit codes, the stage declaration (:mod:`wsss.core.stage`), the settings several
stages share (:mod:`wsss.core.settings`), files written whole or not at all
(:mod:`wsss.core.atomic`), devices, mixed precision and progress bars
(:mod:`wsss.core.runtime`)."""
