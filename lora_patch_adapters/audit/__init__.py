"""``lora-patch audit``: a reproducible adaptive-attack report for a proactive defense (see ``runner``)."""

from .budgets import DEFAULT_BUDGETS, Budget, parse_budgets
from .data import audit_data
from .report import write_report
from .runner import AuditConfig, run_audit
from .transforms import gaussian_blur, jpeg, standard_transforms

__all__ = ["DEFAULT_BUDGETS", "AuditConfig", "Budget", "audit_data", "gaussian_blur", "jpeg", "parse_budgets",
           "run_audit",
           "standard_transforms", "write_report"]
