"""PersuadeGym (UserRL): move a simulated persona from "Strongly Agree" to "Strongly Disagree"."""
