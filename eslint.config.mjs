// ESLint for the VS Code extension (extension/src, extension/test): typescript-eslint's type-checked rules
// (tsconfig.json's project). `npm run lint` runs tsc --noEmit, then this.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['extension/out/**', 'extension/dist/**', 'node_modules/**', '.cache/**', '.venv*/**', 'tests/**'] },
  {
    files: ['extension/**/*.ts'],
    extends: [js.configs.recommended, ...tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // `void promise` marks a promise deliberately not awaited (fire-and-forget UI calls).
      '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: true }],
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['extension/test/**/*.ts'],
    rules: {
      // node:test runs the promises describe() and it() return; awaiting them at top level is not the idiom.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { ignoreVoid: true, allowForKnownSafeCalls: [{ from: 'package', package: 'node:test', name: ['describe', 'it'] }] },
      ],
      // Stand-ins for async APIs (tasks for SerialRunner, the Python extension's API) are async without awaiting.
      '@typescript-eslint/require-await': 'off',
    },
  },
);
