"""FunctionGym (UserRL): guess a hidden arithmetic rule over four numbers; no simulator needed."""
